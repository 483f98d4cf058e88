"""Database fixtures (loaded by tests/conftest.py through ``pytest_plugins``).

* ``embedded_home``: a session-wide ``SYSID_HOME`` in a temporary folder; the embedded PostgreSQL
  server started there is stopped at the end of the session.
* ``db``: the pipeline tables activated under a fresh prefix (``test_<random>_``), once per test
  module and backend: ``"postgres"`` (embedded) always, ``"mysql"`` when ``DJ_HOST`` is set (CI:
  MariaDB). The schema is dropped after the module. Gives ``backend``, ``backend_arg`` (what
  ``schemas.activate(backend=...)`` takes), ``prefix`` and ``conn``; ``db.activate()`` rebinds.
* ``empty_db``: ``db`` with every row deleted first (each test starts from empty tables).
* ``worker_env``: environment for worker subprocesses that use the same database.
* ``sysid_env``: environment for ``python -m sysid ...`` subprocesses on the same database.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DB_BACKENDS = ["postgres"] + (["mysql"] if os.environ.get("DJ_HOST") else [])


def quiet_datajoint() -> None:
    """Filter DataJoint's import/MariaDB notices (tests only; users keep their warnings)."""
    warnings.filterwarnings("ignore", message="No datajoint.json found")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="datajoint")
    warnings.filterwarnings("ignore", message="MariaDB is not officially supported")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@pytest.fixture(scope="session")
def embedded_home():
    """``SYSID_HOME`` for the session: the embedded server's data folder lives inside it."""
    # not under pytest's tmp tree: that is private to the user, and as root the server runs as
    # the unprivileged user "pgserver", which must be able to reach its data folder
    home = Path(tempfile.mkdtemp(prefix="sysid-test-"))
    home.chmod(0o755)
    previous = os.environ.get("SYSID_HOME")
    os.environ["SYSID_HOME"] = str(home)
    yield home
    from schemas import embedded

    try:
        embedded.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)
    finally:
        if previous is None:
            os.environ.pop("SYSID_HOME", None)
        else:
            os.environ["SYSID_HOME"] = previous


def _delete_everything() -> None:
    """Delete all rows and jobs of the active schema, children first (faster than cascading deletes)."""
    import schemas

    for table in schemas.computed_tables().values():
        if table.jobs.is_declared:
            table.jobs.delete_quick()
    ordered = [
        schemas.TrialOutcome,
        schemas.SearchTrial.Run,
        schemas.SearchTrial,
        schemas.Study,
        schemas.MEI.Unit,
        schemas.MEI,
        schemas.EnsembleScore.Unit,
        schemas.EnsembleScore,
        schemas.Ensemble.Member,
        schemas.Ensemble,
        schemas.MEIMethod,
        schemas.MEISeed,
        schemas.TransferredScore.Unit,
        schemas.TransferredScore,
        schemas.TransferredReadoutParameters.Unit,
        schemas.TransferredReadoutParameters,
        schemas.ChainedSource,
        schemas.TransferredModel.StoredState,
        schemas.TransferredModel,
        schemas.TransferCheckpoint,
        schemas.TransferProgress,
        schemas.TransferTask,
        schemas.TransferSource.Trained,
        schemas.TransferSource,
        schemas.Transfer,
        schemas.NeuronScore.Unit,
        schemas.NeuronScore,
        schemas.ReadoutParameters.Unit,
        schemas.ReadoutParameters,
        schemas.TrainedModel.StoredState,
        schemas.TrainedModel,
        schemas.ImportedCheckpoint,
        schemas.DataInfo.Neuron,
        schemas.DataInfo.Session,
        schemas.DataInfo,
        schemas.Checkpoint,
        schemas.TrainingProgress,
        schemas.Experiments.Restrictions,
        schemas.Experiments,
        schemas.Dataset,
        schemas.Model,
        schemas.Trainer,
        schemas.Seed,
        schemas.Fabrikant,
    ]
    for table in ordered:
        table().delete_quick()


@pytest.fixture(scope="module", params=DB_BACKENDS)
def db(request, embedded_home):
    """The pipeline schema on one backend under a fresh prefix, dropped after the module."""
    quiet_datajoint()
    import schemas

    backend_arg = "embedded" if request.param == "postgres" else "mysql"
    prefix = f"test_{uuid.uuid4().hex[:8]}_"

    def activate():
        return schemas.activate(prefix, backend=backend_arg)

    conn = activate()
    schemas.clear_stop()
    yield SimpleNamespace(
        backend=request.param, backend_arg=backend_arg, prefix=prefix, conn=conn, activate=activate
    )
    activate()
    schemas.clear_stop()
    schemas.drop_all()


@pytest.fixture
def empty_db(db):
    """``db`` with all rows deleted before the test."""
    db.activate()
    _delete_everything()
    import schemas

    schemas.clear_stop()
    return db


@pytest.fixture
def worker_env(db):
    """Environment for a subprocess worker: same database, repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["SYSID_SCHEMA_PREFIX"] = db.prefix
    env["SYSID_TEST_BACKEND"] = db.backend_arg
    env["PYTHONWARNINGS"] = "ignore"
    return env


@pytest.fixture
def sysid_env(db, worker_env):
    """Environment for ``python -m sysid`` on ``db``: ``DJ_*`` only for the MySQL backend (else embedded)."""
    if db.backend == "postgres":
        return {k: v for k, v in worker_env.items() if not k.startswith("DJ_")}
    return dict(worker_env)


#: a worker process: activate the test database, populate TrainedModel, print the result
WORKER_CODE = """
import json, os, sys, warnings
warnings.simplefilter("ignore")
import schemas
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
result = schemas.TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
print("RESULT", json.dumps({"success_count": result["success_count"], "interrupted": result.get("interrupted", False)}))
sys.stdout.flush()
"""


def start_worker(env, **kwargs):
    """Start a populate worker subprocess (see :data:`WORKER_CODE`)."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-c", WORKER_CODE],
        env=env,
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
