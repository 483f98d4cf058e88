"""``python -m sysid`` runs the command line (same as the ``sysid`` script)."""

from sysid.cli import main

main()
