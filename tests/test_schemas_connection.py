"""Connection helpers: no import-time database access, embedded server status, schema names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fixtures_db import REPO_ROOT


def test_importing_schemas_touches_no_database():
    code = "import sys, schemas; import schemas.embedded; print('datajoint' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_embedded_status_and_settings(db, embedded_home, tmp_path):
    from schemas import embedded

    if db.backend != "postgres":
        pytest.skip("the embedded server is the postgres backend")
    status = embedded.status()
    assert status["running"] and status["initialized"] and status["backend"] == "postgresql"
    settings = embedded.connection_settings()
    assert settings["host"] == status["host"] and settings["url"].startswith("postgresql://postgres@")
    assert embedded.start()["pid"] == status["pid"]  # reused, not a second server
    assert embedded.status(tmp_path / "none") == {
        "data_dir": str(tmp_path / "none"),
        "initialized": False,
        "running": False,
    }
    assert embedded.stop(tmp_path / "none") is False


def test_schema_names_are_validated(db):
    import schemas

    assert schemas.schema_name("abc_") == "abc_pipeline"
    with pytest.raises(ValueError, match="lowercase"):
        schemas.schema_name("Bad-")
    with pytest.raises(ValueError, match="backend"):
        schemas.activate("abc_", backend="oracle")
