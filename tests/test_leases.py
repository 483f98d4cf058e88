"""Job leases and reconnects: liveness by heartbeat, never by connection id (issue 16, defects 1 and 2).

* an expired lease is re-pended, a fresh one is kept, whoever reserved it;
* a worker whose job was taken over stops it without writing anything or touching the new owner's row;
* MariaDB: a killed connection does not make a second worker train the same model; an account
  without the PROCESS privilege and root do not re-pend each other's live jobs;
* PostgreSQL: a worker survives a restart of the embedded server and finishes its job.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from tests.fixtures_db import REPO_ROOT, start_worker
from tests.test_schemas_training import TOY, _register, _result, _wait_for

#: a second worker: sweep for orphaned jobs first, then populate (prints both)
SWEEP_THEN_POPULATE = """
import json, os, sys, warnings
warnings.simplefilter("ignore")
import schemas
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
swept = schemas.clear_orphaned_reservations()
result = schemas.TrainedModel.populate(reserve_jobs=True, suppress_errors=True) if os.environ.get("POPULATE") else {"success_count": 0}
print("RESULT", json.dumps({"swept": swept, "success_count": result["success_count"]}))
"""

#: the worker loop of `sysid worker --once` on the test database
WORKER_LOOP = """
import json, os, warnings
warnings.simplefilter("ignore")
import schemas
from sysid.worker import WorkerOptions, run_worker
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
done = run_worker(WorkerOptions(once=True, device="cpu", threads=1, sleep=0), schemas=schemas)
print("RESULT", json.dumps({"success_count": done}))
"""


def _run_code(code: str, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _job(key) -> dict:
    from schemas import TrainedModel

    jobs = TrainedModel().jobs
    rows = (jobs & {k: key[k] for k in jobs.primary_key}).to_dicts()
    return rows[0] if rows else {}


def _assert_trained_once(keys, epochs) -> None:
    from schemas import Checkpoint, TrainedModel, TrainingProgress

    assert len(TrainedModel()) == len(keys)
    for key in keys:
        output = (TrainedModel() & key).to_dicts()[0]["output"]
        assert "resumed_from_epoch" not in output, "a second worker resumed the job"
        assert [p["epoch"] for p in (TrainingProgress() & key).to_dicts(order_by="epoch")] == list(
            range(1, epochs + 1)
        )
    assert len(Checkpoint()) == 0, "a stale checkpoint is left beside a finished model"
    assert len(TrainedModel().jobs & "status in ('error', 'reserved')") == 0


def test_expired_lease_is_repended_and_a_fresh_one_is_kept(empty_db, monkeypatch):
    import schemas
    from schemas import TrainedModel

    monkeypatch.setenv("SYSID_LEASE_SECONDS", "30")
    fresh, stale = ({**_register({"epochs": 1}, seeds=(1, 2)), "seed": s} for s in (1, 2))
    jobs = TrainedModel().jobs
    jobs.refresh()
    for key in (fresh, stale):
        assert jobs.reserve(key)
        # as reserved by a worker on another machine (this process's heartbeat leaves it alone)
        jobs.update1({**{k: key[k] for k in jobs.primary_key}, "host": "elsewhere", "pid": 7})
    schemas.leases.release_held(TrainedModel())  # forget this process's own leases of them
    empty_db.conn.query(
        f"UPDATE {jobs.full_table_name} SET reserved_time = CURRENT_TIMESTAMP(3) - "
        f"{schemas._dj_compat.interval_sql(empty_db.conn, 60)} WHERE seed = 2"
    )
    running = schemas.running_jobs().set_index("seed")
    assert running.loc[1, "lease"] == "alive" and running.loc[2, "lease"] == "expired"
    assert running.loc[2, "heartbeat_age_s"] >= 59
    assert schemas.clear_orphaned_reservations() == 1
    assert _job(stale)["status"] == "pending" and _job(fresh)["status"] == "reserved"
    assert schemas.clear_orphaned_reservations() == 0


def test_a_worker_whose_job_was_taken_over_stops_it_and_writes_nothing(empty_db):
    import schemas
    from schemas import Checkpoint, TrainedModel, Trainer, TrainingProgress

    keys = _register({"epochs": 4})
    keys.update(Trainer.add_entry(TOY + "toy_hijacked_trainer", {"epochs": 4, "hijack_at_epoch": 2}))
    key = {**keys, "seed": 1}
    result = TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0
    assert [type(error).__name__ for _, error in result["error_list"]] == ["LeaseLost"] or all(
        "LeaseLost" in str(error) for _, error in result["error_list"]
    )
    assert len(TrainedModel()) == 0
    # epoch 1 was written while the job was ours; nothing after the takeover
    assert [p["epoch"] for p in (TrainingProgress() & key).to_dicts()] == [1]
    assert [c["epoch"] for c in (Checkpoint() & key).to_dicts()] == [1]
    job = _job(key)  # the new owner's reservation is untouched (no error recorded over it)
    assert (job["status"], job["host"], job["pid"]) == ("reserved", "another-host", 1)
    assert not schemas.leases.held_leases()


def test_running_jobs_and_status_never_call_a_dead_workers_job_running(empty_db, monkeypatch):
    import schemas
    from schemas import TrainedModel
    from sysid.render import status_group

    monkeypatch.setenv("SYSID_LEASE_SECONDS", "30")
    key = {**_register({"epochs": 1}), "seed": 1}
    jobs = TrainedModel().jobs
    jobs.refresh()
    assert jobs.reserve(key)
    schemas.leases._unregister(schemas.leases.held_lease(jobs, key))  # the "worker" stops renewing
    empty_db.conn.query(
        f"UPDATE {jobs.full_table_name} SET reserved_time = CURRENT_TIMESTAMP(3) - "
        f"{schemas._dj_compat.interval_sql(empty_db.conn, 20)}"
    )
    assert schemas.running_jobs().loc[0, "lease"] == "late"  # cannot tell yet
    empty_db.conn.query(
        f"UPDATE {jobs.full_table_name} SET reserved_time = CURRENT_TIMESTAMP(3) - "
        f"{schemas._dj_compat.interval_sql(empty_db.conn, 40)}"
    )
    running = schemas.running_jobs()
    assert running.loc[0, "lease"] == "expired"
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_group(schemas.job_status(), running))
    text = console.export_text()
    assert "running jobs: none" in text and "presumed dead" in text


def test_a_dropped_connection_is_reopened_and_retried(empty_db):
    import schemas

    conn = empty_db.conn
    other = schemas._dj_compat.open_connection(
        **{
            k: schemas.connection.active_settings()[k]
            for k in ("host", "user", "password", "port", "backend")
        }
    )
    try:
        victim = int(conn.connection_id)
        if empty_db.backend == "mysql":
            other.query(f"KILL CONNECTION {victim}")
        else:
            other.query("SELECT pg_terminate_backend(%s)", args=(victim,))
    finally:
        other.close()
    retries = []
    value = schemas.retry_transient(
        lambda: conn.query("SELECT 41 + 1").fetchone()[0], conn, on_retry=lambda e, n: retries.append(n)
    )
    assert value == 42
    if empty_db.backend == "postgres":  # DataJoint reconnects by itself only on MySQL
        assert retries == [1] and int(conn.connection_id) != victim
    with conn.transaction:  # no transaction flag is left over from the lost session
        conn.query("SELECT 1")
    with pytest.raises(ValueError):  # not a database failure: raised at once
        schemas.retry_transient(lambda: int("x"), conn)


# ------------------------------------------------------------------------------------- MariaDB
def _mysql_only(db):
    if db.backend != "mysql":
        pytest.skip("KILL CONNECTION and accounts: MariaDB")


def test_killed_connection_does_not_make_a_second_worker_train_the_model(empty_db, worker_env, monkeypatch):
    _mysql_only(empty_db)
    # a short lease: the second worker sweeps long after the first one's reservation time
    monkeypatch.setenv("SYSID_LEASE_SECONDS", "3")
    worker_env["SYSID_LEASE_SECONDS"] = "3"
    key = {**_register({"epochs": 10, "sleep": 0.6}), "seed": 1}
    first = start_worker(worker_env)
    from schemas import TrainingProgress

    assert _wait_for(lambda: len(TrainingProgress() & key) >= 1), "no progress row appeared"
    connection_id = int(_job(key)["connection_id"])
    empty_db.conn.query(f"KILL CONNECTION {connection_id}")
    time.sleep(4)  # more than a lease since the reservation: only the heartbeat keeps the job
    second = _run_code(SWEEP_THEN_POPULATE, {**worker_env, "POPULATE": "1"})
    assert _result(second) == {"swept": 0, "success_count": 0}
    assert _result(first)["success_count"] == 1
    assert first.returncode == 0
    _assert_trained_once([key], epochs=10)


def test_accounts_without_process_privilege_keep_their_live_jobs(empty_db, worker_env, monkeypatch):
    _mysql_only(empty_db)
    import schemas

    user, password = f"lease_{uuid.uuid4().hex[:6]}", "lease-test"
    conn = empty_db.conn
    database = schemas.schema_name(empty_db.prefix)
    conn.query("CREATE USER %s@%s IDENTIFIED BY %s", args=(user, "%", password))
    try:
        # everything on the test schema only: no PROCESS, so the process list shows its own sessions
        conn.query(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@%s", args=(user, "%"))
        monkeypatch.setenv("SYSID_LEASE_SECONDS", "3")
        other_env = {**worker_env, "SYSID_LEASE_SECONDS": "3", "DJ_USER": user, "DJ_PASS": password}
        root_env = {**worker_env, "SYSID_LEASE_SECONDS": "3"}
        keys = [{**_register({"epochs": 16, "sleep": 0.5}, seeds=(1, 2)), "seed": s} for s in (1, 2)]
        from schemas import TrainingProgress

        theirs = start_worker(other_env)
        assert _wait_for(lambda: len(TrainingProgress()) >= 1), "no progress row appeared"
        mine = start_worker(root_env)
        reserved = schemas.TrainedModel().jobs & "status='reserved'"
        assert _wait_for(lambda: len(reserved) == 2)
        assert {row["user"].split("@")[0] for row in reserved.to_dicts()} == {user, "root"}
        # neither account sees the other's connections in the process list; the leases decide
        assert schemas.clear_orphaned_reservations() == 0  # root's sweep
        sweep = _run_code(SWEEP_THEN_POPULATE, other_env)  # the other account's sweep
        assert _result(sweep) == {"swept": 0, "success_count": 0}
        assert _result(theirs)["success_count"] == 1 and _result(mine)["success_count"] == 1
        _assert_trained_once(keys, epochs=16)
    finally:
        conn.query("DROP USER %s@%s", args=(user, "%"))


# ---------------------------------------------------------------------------------- PostgreSQL
def test_worker_survives_an_embedded_server_restart(empty_db, worker_env, embedded_home):
    if empty_db.backend != "postgres":
        pytest.skip("the embedded PostgreSQL server")
    import schemas
    from schemas import TrainingProgress, embedded

    key = {**_register({"epochs": 10, "sleep": 0.5}), "seed": 1}
    worker = _run_code(WORKER_LOOP, worker_env)
    assert _wait_for(lambda: len(TrainingProgress() & key) >= 1), "no progress row appeared"
    data_dir = embedded_home / "pgdata"
    assert embedded.stop(data_dir)
    time.sleep(2)
    embedded.start(data_dir)
    assert schemas.recover_connection()  # this process's connection died too
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr[-3000:]
    assert "RESULT" in stdout, stderr[-3000:]
    assert "retry 1/" in stderr  # the training's write failed, and went on after reconnecting
    _assert_trained_once([key], epochs=10)
    assert len(schemas.errors("TrainedModel")) == 0


def test_db_stop_refuses_while_clients_are_connected(monkeypatch):
    import shutil
    import tempfile
    from pathlib import Path

    from click.testing import CliRunner

    from schemas import _dj_compat, embedded
    from sysid.cli import cli

    home = Path(tempfile.mkdtemp(prefix="sysid-lease-db-"))
    home.chmod(0o755)  # as root the server runs as the user "pgserver", who must reach the folder
    monkeypatch.setenv("SYSID_HOME", str(home))
    for name in ("DJ_HOST", "DJ_USER", "DJ_PASS", "DJ_PORT", "DJ_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    try:
        server = embedded.start()
        client = _dj_compat.open_connection(server["host"], "postgres", "", server["port"], "postgresql")
        assert embedded.client_count() == 1
        refused = CliRunner().invoke(cli, ["db", "stop"])
        assert refused.exit_code != 0 and "1 client connection(s)" in refused.output
        assert embedded.status()["running"]
        forced = CliRunner().invoke(cli, ["db", "stop", "--force"])
        assert forced.exit_code == 0 and "stopped" in forced.output
        assert not embedded.status()["running"]
        client.close()
    finally:
        embedded.stop(home / "pgdata")
        shutil.rmtree(home, ignore_errors=True)


def test_the_heartbeat_renews_a_held_lease_without_epochs(empty_db, monkeypatch):
    import schemas
    from schemas import TrainedModel

    monkeypatch.setenv("SYSID_LEASE_SECONDS", "1")  # heartbeat every 0.2 s
    key = {**_register({"epochs": 1}), "seed": 1}
    jobs = TrainedModel().jobs
    jobs.refresh()
    assert jobs.reserve(key)
    try:
        empty_db.conn.query(
            f"UPDATE {jobs.full_table_name} SET reserved_time = CURRENT_TIMESTAMP(3) - "
            f"{schemas._dj_compat.interval_sql(empty_db.conn, 60)}"
        )
        assert _wait_for(lambda: schemas.running_jobs().loc[0, "heartbeat_age_s"] < 1, timeout=10)
        assert schemas.clear_orphaned_reservations() == 0
    finally:
        assert schemas.leases.release_held(TrainedModel()) == 1  # back to the queue, no longer renewed
    assert _job(key)["status"] == "pending"
