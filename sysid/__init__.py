"""Orchestration of the visual-sysid pipeline: the ``sysid`` command line, workers, reports and the demo.

Importing this package touches no database; the CLI (:mod:`sysid.cli`) connects on demand.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
