"""Connection helpers: no import-time database access, embedded server status, schema names, activation."""

from __future__ import annotations

import logging
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


#: one of several processes activating a brand-new schema and populating at once (see below)
FRESH_SCHEMA_WORKER = """
import os, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import schemas
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
folder = Path(os.environ["SYSID_TEST_BARRIER"])
(folder / str(os.getpid())).touch()
deadline = time.time() + 90
while len(list(folder.iterdir())) < int(os.environ["SYSID_TEST_N_WORKERS"]) and time.time() < deadline:
    time.sleep(0.01)
result = schemas.populate_all(reserve_jobs=True, suppress_errors=False)
print("OK", sorted(result))
"""


def test_concurrent_first_populates_on_a_fresh_schema_do_not_race(db, worker_env, tmp_path):
    import uuid

    import schemas
    from schemas import jobs

    prefix = f"test_{uuid.uuid4().hex[:8]}_"
    n_workers = 4
    env = {
        **worker_env,
        "SYSID_SCHEMA_PREFIX": prefix,
        "SYSID_TEST_BARRIER": str(tmp_path),
        "SYSID_TEST_N_WORKERS": str(n_workers),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH_SCHEMA_WORKER],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n_workers)
    ]
    outputs = [p.communicate(timeout=180) for p in processes]
    try:
        for process, (stdout, stderr) in zip(processes, outputs, strict=True):
            assert process.returncode == 0 and "OK" in stdout, stderr[-3000:]
            assert "DuplicateError" not in stderr
        schemas.activate(prefix, backend=db.backend_arg)
        from datajoint.jobs import Job

        assert all(Job(table).is_declared for table in jobs.computed_tables().values())
    finally:
        schemas.activate(prefix, backend=db.backend_arg)
        schemas.drop_all()
        db.activate()


class _Records(logging.Handler):
    """Collects the messages logged to a logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_activate_declares_jobs_tables_with_core_types(db):
    import uuid

    from datajoint.jobs import Job

    import schemas
    from schemas import jobs

    records = _Records()
    dj_logger = logging.getLogger("datajoint")
    dj_logger.addHandler(records)
    prefix = f"test_{uuid.uuid4().hex[:8]}_"
    try:
        schemas.activate(prefix, backend=db.backend_arg)
        tables = jobs.computed_tables()
        assert all(Job(table).is_declared for table in tables.values())
        schemas.populate_all(reserve_jobs=True)
        trained = tables["TrainedModel"]
        assert trained.jobs.heading["seed"].original_type == "int32"
        assert jobs.computed_tables()["TrainedModel"] is trained  # cached between polls
    finally:
        dj_logger.removeHandler(records)
        schemas.drop_all()
        db.activate()
    assert not [m for m in records.messages if m.startswith("Native type")], records.messages
    assert jobs.computed_tables()["TrainedModel"] is not trained  # rebinding makes new instances
