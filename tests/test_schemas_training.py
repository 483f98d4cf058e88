"""TrainedModel with tiny toy functions: progress, checkpoints, stop/resume, crashes, errors, workers."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from tests.fixtures_db import start_worker

TOY = "tests.toy_fns."


def _register(trainer_config, seeds=(1,), model_fn="toy_model"):
    from schemas import Dataset, Model, Seed, Trainer

    Seed.insert([{"seed": s} for s in seeds], skip_duplicates=True)
    keys = {
        **Dataset.add_entry(TOY + "toy_dataset", {"n_trials": 24}, skip_duplicates=True),
        **Model.add_entry(TOY + model_fn, {}, skip_duplicates=True),
        **Trainer.add_entry(TOY + "toy_trainer", trainer_config, skip_duplicates=True),
    }
    return keys


def _wait_for(condition, timeout=60.0, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def _result(process) -> dict:
    stdout, stderr = process.communicate(timeout=120)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"worker printed no result; stderr:\n{stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_populate_stores_result_progress_and_loads_back(empty_db):
    import schemas
    from schemas import Checkpoint, TrainedModel, TrainingProgress

    key = {**_register({"epochs": 3}), "seed": 1}
    result = schemas.populate_all(reserve_jobs=True)
    assert result["TrainedModel"]["success_count"] == 1
    row = (TrainedModel() & key).to_dicts()[0]
    assert row["output"]["epochs"] == 3 and row["state_nbytes"] > 0
    assert set(row["model_state"]) == {"weight", "bias"} and isinstance(
        row["model_state"]["weight"], np.ndarray
    )
    assert row["package_versions"]["torch"] and row["host"]
    assert row["package_versions"]["cpu_kernels"] in {"loaded", "unavailable", "off"}
    assert int(row["package_versions"]["torch_threads"]) >= 1
    progress = (TrainingProgress() & key).to_dicts(order_by="epoch")
    assert [p["epoch"] for p in progress] == [1, 2, 3]
    assert np.allclose([p["val_correlation"] for p in progress], row["output"]["val_correlation"])
    assert len(Checkpoint() & key) == 0  # dropped once the result is stored
    model = TrainedModel.load_model(key, include_dataloader=False)
    from tests.toy_fns import _correlation, toy_dataset

    x, y = toy_dataset(n_trials=24)["validation"]["toy"]
    with torch.no_grad():
        assert _correlation(model(x), y) == pytest.approx(row["score"], abs=1e-6)
    frame = schemas.results()
    assert len(frame) == 1 and frame.loc[0, "trainer.epochs"] == 3 and frame.loc[0, "score"] == row["score"]
    status = schemas.job_status()
    assert status.loc["TrainedModel", "done"] == 1 and status.loc["TrainedModel", "remaining"] == 0


def test_training_error_is_recorded_and_nothing_half_written(empty_db):
    import schemas
    from schemas import TrainedModel

    _register({"epochs": 3, "fail_at_epoch": 2})
    result = TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    assert len(TrainedModel()) == 0 and len(TrainedModel.StoredState()) == 0
    errors = schemas.errors()
    assert list(errors["table"]) == ["TrainedModel"]
    assert "RuntimeError: toy trainer failed on purpose at epoch 2" in errors.loc[0, "error_message"]
    assert schemas.job_status().loc["TrainedModel", "error"] == 1
    assert schemas.ignore_errors("TrainedModel") == 1
    assert schemas.job_status().loc["TrainedModel", "ignore"] == 1
    with pytest.raises(ValueError, match="unknown table"):
        schemas.retry_errors("Nope")


def test_retry_errors_repends(empty_db):
    import schemas
    from schemas import TrainedModel

    _register({"epochs": 1, "fail_at_epoch": 1})
    TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
    assert schemas.retry_errors() == 1
    assert len(schemas.errors()) == 0
    TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
    assert len(schemas.errors()) == 1  # it ran (and failed) again


def test_delete_removes_parts_progress_and_checkpoint(empty_db):
    from schemas import Checkpoint, TrainedModel, TrainingProgress

    key = {**_register({"epochs": 2}, seeds=(1, 2)), "seed": 1}
    TrainedModel.populate(reserve_jobs=True)
    Checkpoint().insert1({**key, "epoch": 1, "state": b"stale", "nbytes": 5})
    other = {**key, "seed": 2}
    (TrainedModel() & key).delete(prompt=False)
    assert (
        len(TrainedModel() & key) == 0 and len(TrainingProgress() & key) == 0 and len(Checkpoint() & key) == 0
    )
    assert len(TrainedModel() & other) == 1 and len(TrainingProgress() & other) == 2


def test_large_state_needs_a_store(empty_db, tmp_path):
    import datajoint as dj

    import schemas
    from schemas import TrainedModel

    key = {**_register({"epochs": 1}, model_fn="toy_big_model"), "seed": 1}
    saved = dict(dj.config.stores)
    try:
        dj.config.stores = {k: v for k, v in saved.items() if k != "models"}
        TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
        assert len(TrainedModel()) == 0
        assert "no object store 'models' is configured" in schemas.errors().loc[0, "error_message"]
        schemas.retry_errors()
        dj.config.stores = {**saved, "models": {"protocol": "file", "location": str(tmp_path)}}
        TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
        assert len(schemas.errors()) == 0
        row = (TrainedModel() & key).to_dicts()[0]
        assert row["model_state"] is None and row["state_nbytes"] > 8 * 2**20
        state = TrainedModel.fetch_state(key)
        assert state["extra"][-1].item() == 3_000_000 - 1
    finally:
        dj.config.stores = saved


def test_two_worker_processes_train_every_key_once(empty_db, worker_env):
    from schemas import TrainedModel, TrainingProgress

    _register({"epochs": 2, "sleep": 0.05}, seeds=(1, 2, 3, 4))
    workers = [start_worker(worker_env) for _ in range(2)]
    results = [_result(w) for w in workers]
    # a failed job's message and the project's frames of its traceback (e.g. a deadlock, error 1213)
    failures = [
        "\n".join(
            [
                r["error_message"],
                *(line for line in (r["error_stack"] or "").splitlines() if "/schemas/" in line),
            ]
        )
        for r in (TrainedModel().jobs & "status='error'").to_dicts()
    ]
    assert sum(r["success_count"] for r in results) == 4, "\n".join(failures)
    assert len(TrainedModel()) == 4
    assert len(TrainingProgress()) == 4 * 2  # every key trained once: 2 epochs each


def test_sigterm_checkpoints_releases_job_and_resume_continues(empty_db, worker_env):
    import schemas
    from schemas import Checkpoint, TrainedModel, TrainingProgress

    key = {**_register({"epochs": 6, "sleep": 0.3}), "seed": 1}
    worker = start_worker(worker_env)
    assert _wait_for(lambda: len(TrainingProgress() & key) >= 1), "no progress row appeared"
    worker.send_signal(signal.SIGTERM)
    assert _result(worker)["interrupted"] is True
    assert worker.returncode == 0
    assert len(TrainedModel()) == 0
    epoch = (Checkpoint() & key).to_dicts()[0]["epoch"]
    assert 1 <= epoch < 6
    assert schemas.job_status().loc["TrainedModel", "pending"] == 1  # released, not an error
    TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
    output = (TrainedModel() & key).to_dicts()[0]["output"]
    assert output["resumed_from_epoch"] == epoch and output["start_epoch"] == epoch
    assert output["epochs"] == 6  # the resumed run continued the learning curve
    assert [p["epoch"] for p in (TrainingProgress() & key).to_dicts(order_by="epoch")] == list(range(1, 7))


def test_killed_worker_is_cleared_and_resumed_from_checkpoint(empty_db, worker_env, monkeypatch):
    import schemas
    from schemas import Checkpoint, TrainedModel

    # a short lease: the killed worker's heartbeat stops and its job expires within seconds
    monkeypatch.setenv("SYSID_LEASE_SECONDS", "2")
    worker_env["SYSID_LEASE_SECONDS"] = "2"
    key = {**_register({"epochs": 5, "sleep": 0.3}), "seed": 1}
    worker = start_worker(worker_env)
    assert _wait_for(lambda: len(Checkpoint() & key) == 1), "no checkpoint appeared"
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=30)
    assert schemas.job_status().loc["TrainedModel", "reserved"] == 1
    cleared = []
    assert _wait_for(
        lambda: cleared.append(schemas.clear_orphaned_reservations()) or sum(cleared) == 1, timeout=20
    )
    assert schemas.job_status().loc["TrainedModel", "pending"] == 1
    epoch = (Checkpoint() & key).to_dicts()[0]["epoch"]
    TrainedModel.populate(reserve_jobs=True, suppress_errors=True)
    output = (TrainedModel() & key).to_dicts()[0]["output"]
    assert epoch > 0 and output["resumed_from_epoch"] == epoch and output["start_epoch"] == epoch


def test_live_reservations_are_not_cleared(empty_db):
    import schemas
    from schemas import TrainedModel

    key = {**_register({"epochs": 1}), "seed": 1}
    jobs = TrainedModel().jobs
    jobs.refresh()
    assert jobs.reserve(key)  # reserved by this (live) connection
    assert schemas.clear_orphaned_reservations() == 0
    running = schemas.running_jobs()
    assert len(running) == 1 and running.loc[0, "seed"] == 1 and running.loc[0, "epoch"] is None


def test_progress_recorder_checkpoints_every_k_epochs_and_on_stop(empty_db, monkeypatch):
    import schemas
    from schemas.progress import Checkpoint, ProgressRecorder, TrainingProgress
    from schemas.settings import current_settings
    from tests.toy_fns import ToyRecord

    key = {**_register({"epochs": 1}), "seed": 1}
    monkeypatch.setenv("SYSID_CHECKPOINT_EVERY", "2")
    recorder = ProgressRecorder(key, empty_db.conn, every=current_settings().checkpoint_every)

    def record(epoch):
        return ToyRecord(epoch, 1.0 / epoch, float("nan"), 0.1, 0.01, {"epoch": epoch, "model": {}})

    assert recorder(record(1)) is False and len(Checkpoint() & key) == 0
    assert recorder(record(2)) is False and (Checkpoint() & key).to_dicts()[0]["epoch"] == 2
    assert recorder(record(3)) is False and (Checkpoint() & key).to_dicts()[0]["epoch"] == 2
    try:
        schemas.request_stop()
        assert recorder(record(4)) is True  # stop: checkpoint now, then end training
    finally:
        schemas.clear_stop()
    assert (Checkpoint() & key).to_dicts()[0]["epoch"] == 4
    progress = (TrainingProgress() & key).to_dicts(order_by="epoch")
    assert [p["epoch"] for p in progress] == [1, 2, 3, 4] and progress[0][
        "val_correlation"
    ] is None  # NaN -> NULL


def test_device_is_where_the_model_trained_not_the_config_value(empty_db):
    import schemas
    from schemas import TrainedModel
    from schemas.run_info import device_used

    key = {**_register({"epochs": 1}), "seed": 1}
    schemas.populate_all(reserve_jobs=True)
    assert (TrainedModel() & key).to_dicts()[0]["device"] == "cpu"

    model = torch.nn.Linear(2, 1)
    assert device_used(model) == "cpu"
    assert device_used(torch.nn.Linear(2, 1, device="meta")) == "meta"  # read from the parameters
    assert device_used(torch.nn.Module()) == "cpu"  # nothing to look at
    assert device_used(model, {"device": "meta"}) == "meta"  # the trainer's report wins
    assert device_used(model, {"device": "not a device"}) == "not a device"
    if torch.cuda.is_available():
        described = device_used(model.to("cuda"))
        assert described.startswith("cuda:0 (") and torch.cuda.get_device_name(0)[:20] in described


def test_idle_poll_is_a_few_counts_and_skips_only_tables_without_work(empty_db):
    import schemas
    from schemas import TrainedModel
    from schemas.jobs import computed_tables, has_work

    key = {**_register({"epochs": 1}), "seed": 1}
    trained = computed_tables()["TrainedModel"]
    assert has_work(trained) and not has_work(trained, {"seed": 2})
    jobs = TrainedModel().jobs
    jobs.refresh()
    assert has_work(trained)  # pending
    assert jobs.reserve(key) and not has_work(trained)  # reserved by a worker
    jobs.error(key, "RuntimeError: failed on purpose")
    assert not has_work(trained)  # failed jobs wait for retry_errors
    assert schemas.retry_errors("TrainedModel") == 1 and has_work(trained)
    result = schemas.populate_all(reserve_jobs=True)
    assert result["TrainedModel"]["success_count"] == 1 and not has_work(trained)

    conn = empty_db.conn
    statements: list[str] = []
    query = conn.query

    def counting(sql, *args, **kwargs):
        statements.append(sql)
        return query(sql, *args, **kwargs)

    conn.query = counting
    try:
        idle = schemas.populate_all(reserve_jobs=True, max_calls=1)
    finally:
        del conn.query  # back to the class's method
    assert all(entry == {"success_count": 0, "error_list": []} for entry in idle.values())
    assert len(statements) <= len(idle), statements


def test_worker_logs_each_job_from_the_tables_make_steps(empty_db, sysid_env):
    """A real ``sysid worker`` subprocess: start/done/FAILED lines come from the make steps, with the key."""
    import subprocess
    import sys

    from schemas.job_events import describe_key

    good = {**_register({"epochs": 2}), "seed": 1}
    bad = {**_register({"epochs": 3, "fail_at_epoch": 2}), "seed": 1}
    result = subprocess.run(
        [sys.executable, "-m", "sysid", "worker", "--once", "--threads", "1", "--device", "cpu"],
        env=sysid_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()

    def matching(text):
        return [line for line in lines if text in line]

    assert len(matching(f"start TrainedModel {describe_key(good)}")) == 1, result.stderr
    (done,) = matching(f"done  TrainedModel {describe_key(good)} (")
    assert done.endswith(" s)") and " INFO " in done
    assert len(matching(f"start TrainedModel {describe_key(bad)}")) == 1, result.stderr
    (failed,) = matching(f"FAILED TrainedModel {describe_key(bad)} after ")
    assert " ERROR " in failed and failed.endswith("RuntimeError: toy trainer failed on purpose at epoch 2")
    assert not matching("Making {") and not matching("Success making")  # nothing of DataJoint's own


def test_replacing_a_missing_progress_row_leaves_other_workers_free_to_insert(empty_db):
    """On MySQL/MariaDB a DELETE that matches nothing locks the gap; a second worker's insert then waits
    (and two of them deadlock, error 1213). ``delete_present`` reads first and takes no lock."""
    if empty_db.backend != "mysql":
        pytest.skip("gap locks are InnoDB's")
    from schemas import TrainingProgress, _dj_compat, connection
    from schemas.progress import delete_present

    keys = [{**_register({"epochs": 1}, seeds=(1, 2)), "seed": s, "epoch": 1} for s in (1, 2)]
    settings = connection.connection_settings_from_env(empty_db.backend_arg)
    other = _dj_compat.open_connection(
        settings["host"], settings["user"], settings["password"], settings["port"], settings["backend"]
    )
    other.query("SET SESSION innodb_lock_wait_timeout = 1")
    names = list(keys[1])
    insert = (
        f"INSERT INTO {TrainingProgress.full_table_name} ({', '.join(f'`{n}`' for n in names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))})"
    )

    def other_worker_inserts() -> bool:
        try:
            other.query(insert, args=[keys[1][n] for n in names])
        except Exception as error:  # the driver's lock-wait timeout (1205)
            assert "1205" in str(error) or "Lock wait" in str(error), error
            return False
        return True

    conn = empty_db.conn
    try:
        with conn.transaction:
            (TrainingProgress() & keys[0]).delete_quick()  # a plain delete of nothing locks the gap
            assert not other_worker_inserts()
        with conn.transaction:
            delete_present(TrainingProgress() & keys[0])  # nothing to delete: no lock
            assert other_worker_inserts()
    finally:
        other.close()
