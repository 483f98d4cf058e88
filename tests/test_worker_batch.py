"""Worker options for batch systems: --max-runtime, --max-idle, retries of passing failures, log tags.

The database tests run real ``sysid worker`` processes on the toy functions (tests/toy_fns.py).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sysid import worker
from sysid.retry import RetryBudget, backoff_seconds, is_transient

TOY = "tests.toy_fns."


def test_parse_duration():
    assert [worker.parse_duration(t) for t in ("90", "90s", "45m", "2h30m", "1.5h", "1d", 12)] == [
        90,
        90,
        2700,
        9000,
        5400,
        86400,
        12,
    ]
    assert worker.parse_duration("1-00:00:00") == 86400 and worker.parse_duration("04:00:00") == 14400
    assert worker.parse_duration("10:30") == 630  # MM:SS
    for bad in ("", "soon", "1h2x", "-5"):
        with pytest.raises(ValueError, match="invalid duration"):
            worker.parse_duration(bad)
    with pytest.raises(ValueError, match="positive"):
        worker.parse_duration("0")


def test_batch_options_are_checked():
    with pytest.raises(ValueError, match="max_runtime"):
        worker.WorkerOptions(max_runtime=0)
    with pytest.raises(ValueError, match="max_idle"):
        worker.WorkerOptions(max_idle=0)
    from click.testing import CliRunner

    from sysid.cli import cli

    result = CliRunner().invoke(cli, ["worker", "--max-runtime", "soon"])
    assert result.exit_code == 2 and "--max-runtime" in result.output and "invalid duration" in result.output


def test_transient_errors_are_told_from_bugs():
    for message in (
        "OperationalError: (2013, 'Lost connection to MySQL server during query')",
        "OperationalError: (2006, 'MySQL server has gone away')",
        "OperationalError: (1213, 'Deadlock found when trying to get lock; try restarting transaction')",
        "OperationalError: (1205, 'Lock wait timeout exceeded; try restarting transaction')",
        "OperationalError: server closed the connection unexpectedly",
        "SerializationFailure: could not serialize access due to concurrent update",
        "SystemExit: SIGTERM received",
    ):
        assert is_transient(message), message
    for message in (
        "RuntimeError: toy trainer failed on purpose at epoch 2",
        "ValueError: shapes do not match",
        "FileNotFoundError: /data/s1 not found",
        "CUDA out of memory",
        "",
        None,
    ):
        assert not is_transient(message), message
    cause = ConnectionResetError("Connection reset by peer")
    wrapped = RuntimeError("storing the model failed")
    wrapped.__cause__ = cause
    assert is_transient(wrapped) and not is_transient(RuntimeError("storing the model failed"))


def test_retry_budget_and_backoff():
    budget = RetryBudget(2)
    assert budget.allow("a") and budget.allow("a") and not budget.allow("a")
    assert budget.allow("b") and budget.used("a") == 2
    budget.reset("a")
    assert budget.allow("a")
    with pytest.raises(ValueError, match="retry limit"):
        RetryBudget(-1)
    waits = [backoff_seconds(n, cap=30.0) for n in range(1, 12)]
    assert all(0 < w <= 45.0 for w in waits) and 1.0 <= waits[0] <= 3.0


def _register(trainer_fn: str, trainer_config: dict, seeds=(1,)):
    from schemas import Dataset, Model, Seed, Trainer

    Seed.insert([{"seed": s} for s in seeds], skip_duplicates=True)
    return {
        **Dataset.add_entry(TOY + "toy_dataset", {"n_trials": 24}, skip_duplicates=True),
        **Model.add_entry(TOY + "toy_model", {}, skip_duplicates=True),
        **Trainer.add_entry(TOY + trainer_fn, trainer_config, skip_duplicates=True),
    }


def _worker(env, *args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "sysid", "worker", "--threads", "1", "--device", "cpu", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_max_runtime_checkpoints_releases_the_job_and_exits_0(empty_db, sysid_env):
    import schemas
    from schemas import Checkpoint, TrainedModel

    key = {**_register("toy_trainer", {"epochs": 400, "sleep": 0.1}), "seed": 1}
    started = time.monotonic()
    result = _worker(sysid_env, "--max-runtime", "15s", "--sleep", "0.2")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 60  # the training would have taken 40 s more
    assert "reached --max-runtime 15 s after 1 job(s)" in result.stderr  # DataInfo's
    assert len(TrainedModel()) == 0
    assert (Checkpoint() & key).to_dicts()[0]["epoch"] >= 1
    status = schemas.job_status().loc["TrainedModel"]
    assert status["pending"] == 1 and status["reserved"] == 0 and status["error"] == 0  # released


def test_passing_failure_is_retried_and_max_idle_ends_the_worker(empty_db, sysid_env, tmp_path):
    """A job that fails as a lost connection would is re-pended and trained; then 2 empty polls end it."""
    from schemas import TrainedModel

    key = {**_register("toy_flaky_trainer", {"epochs": 2, "marker": str(tmp_path / "failed")}), "seed": 1}
    bug = {**_register("toy_trainer", {"epochs": 3, "fail_at_epoch": 2}), "seed": 1}
    result = _worker(sysid_env, "--max-idle", "2", "--sleep", "0.2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "failed").exists()  # it did fail once
    assert len(TrainedModel() & key) == 1  # ... and was trained on the retry
    # (re-pended by the worker's retry, or by the schemas layer's own reconnect-and-retry since the lease merge)
    # a real bug stays an error and is not retried
    (error,) = (TrainedModel().jobs & "status='error'").to_dicts()
    assert error["trainer_hash"] == bug["trainer_hash"] and "failed on purpose" in error["error_message"]
    assert "nothing left to do after 2 empty poll(s); exiting" in result.stderr


def test_log_lines_name_the_slurm_job_and_array_task(empty_db, sysid_env):
    env = dict(sysid_env, SLURM_JOB_ID="1239", SLURM_ARRAY_JOB_ID="1234", SLURM_ARRAY_TASK_ID="5")
    result = _worker(env, "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "sysid.worker" in line]
    assert lines and all("[slurm 1234_5 (job 1239)] sysid.worker:" in line for line in lines), lines
    assert "worker started on" in lines[0] and "slurm 1234_5 (job 1239))" in lines[0]


def test_sigterm_after_the_deadline_is_still_a_first_signal():
    """--max-runtime asks for the stop; the scheduler's SIGTERM that follows must not exit at once (130)."""
    import os
    import textwrap

    code = textwrap.dedent(
        """
        import os, signal, time, types
        from sysid.worker import StopSignal, _Deadline
        stops = []
        schemas = types.SimpleNamespace(request_stop=lambda: stops.append("deadline"))
        stop = StopSignal(lambda signum: stops.append(signal.Signals(signum).name))
        deadline = _Deadline(0.2, time.monotonic(), schemas, stop)
        time.sleep(0.5)
        assert deadline.reached and not stop.stopping, (deadline.reached, stop.stopping)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(10)
        print(stops)
        """
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['deadline', 'SIGTERM']"
