"""The library's layering at run time: importing every pipeline/ module loads no database or CLI code.

The static side (no import cycle, layers pointing downwards, deferred imports included) is
tests/test_architecture.py; this one catches what a static read cannot, e.g. a dependency that
imports a database driver.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_architecture import _modules

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_imports_no_database_or_cli_code():
    modules = sorted(m for m in _modules() if m.split(".")[0] == "pipeline")
    assert {"pipeline.contracts", "pipeline.measures.evaluation", "pipeline.training.trainer"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('datajoint', 'schemas', 'sysid', 'pymysql')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
