"""`sysid slurm --submit` on a real single-node SLURM cluster (slurm-wlm + munge) and MariaDB.

``.ci/slurm-up.sh`` starts the cluster (the fixture calls it when no node is up and this is root);
the tests skip, saying why, where that is impossible. The array tasks are real ``sbatch`` jobs
running ``srun sysid worker --device cpu`` on the toy functions of tests/toy_fns.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_worker_batch import _register

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_UP = REPO_ROOT / ".ci" / "slurm-up.sh"


def _node_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM cluster whose node is up (started with .ci/slurm-up.sh when needed and possible)."""
    if _node_up():
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM node is up, and starting one (.ci/slurm-up.sh) needs root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is missing (install slurm-wlm and munge)")
    try:
        out = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(".ci/slurm-up.sh did not finish within 10 minutes")
    if out.returncode != 0 or not _node_up():
        pytest.skip(f"the SLURM cluster could not be started: {(out.stderr or out.stdout).strip()[-500:]}")


@pytest.fixture
def cluster_db(slurm_cluster, empty_db, sysid_env, tmp_path):
    """The MariaDB test schema and the environment to submit from (the embedded server is refused)."""
    if empty_db.backend != "mysql":
        pytest.skip(
            "SLURM jobs need a database server (DJ_HOST); the embedded one is refused (test_slurm.py)"
        )
    env = dict(sysid_env, OMP_NUM_THREADS="1")
    env.pop("SLURM_JOB_ID", None)
    submitted: list[str] = []
    yield env, submitted
    for job in submitted:  # a failed test must not leave workers on the next module's schema
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
        _wait_done(job, timeout=60)


def _submit(env, cwd: Path, submitted: list[str], *args) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "sysid", "slurm", "--submit", "--cpu", "--time", "10:00"]
        + ["--signal-margin", "60", "--threads", "1", "--sleep", "1", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job = re.search(r"submitted job array (\d+)", result.stdout)[1]
    submitted.append(job)
    return job


def _active(job: str) -> list[str]:
    """States of the array's tasks that are pending, running or completing."""
    out = subprocess.run(
        ["squeue", "--noheader", "--jobs", job, "--format=%i %t"], capture_output=True, text=True
    )
    return out.stdout.split() if out.returncode == 0 else []


def _wait_done(job: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _active(job):
            return True
        time.sleep(0.5)
    return False


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _logs(cwd: Path, job: str) -> dict[int, str]:
    return {
        int(path.stem.rsplit("_", 1)[1]): path.read_text(errors="replace")
        for path in (cwd / "slurm-logs").glob(f"sysid-worker-{job}_*.out")
    }


def test_job_array_of_three_tasks_trains_a_grid_of_six_models_each_once(cluster_db, tmp_path):
    import schemas
    from schemas import TrainedModel, TrainingProgress

    env, submitted = cluster_db
    _register("toy_trainer", {"epochs": 3, "sleep": 0.2}, seeds=(1, 2, 3, 4, 5, 6))
    job = _submit(env, tmp_path, submitted, "--tasks", "3", "--max-parallel", "3", "--max-idle", "2")
    assert _wait_done(job, timeout=150), f"job array {job} still running: {_active(job)}"
    logs = _logs(tmp_path, job)
    everything = "\n".join(f"--- task {t}\n{text[-2000:]}" for t, text in sorted(logs.items()))
    assert sorted(logs) == [1, 2, 3], everything
    assert len(TrainedModel()) == 6, everything
    assert len(TrainingProgress()) == 6 * 3  # every key trained exactly once
    failed = schemas.errors("TrainedModel")  # (the toy dataset has no DataInfo: its error is expected)
    assert failed.empty, failed[["table", "error_message", "host", "pid"]].to_string() + everything
    trained = 0
    for task, text in logs.items():
        # every worker line names the array job and task
        worker_lines = [line for line in text.splitlines() if " sysid.worker: " in line]
        # (the job id differs from the array id except for the array's last task)
        tag = re.compile(rf"\[slurm {job}_{task}(?: \(job \d+\))?\] sysid\.worker: ")
        assert worker_lines and all(tag.search(line) for line in worker_lines), text
        assert "nothing left to do after 2 empty poll(s)" in text
        trained += text.count("done  TrainedModel")
    assert trained == 6


def test_scancel_signal_term_checkpoints_and_the_next_task_resumes(cluster_db, tmp_path):
    from schemas import Checkpoint, TrainedModel

    env, submitted = cluster_db
    key = {**_register("toy_trainer", {"epochs": 40, "sleep": 0.25}), "seed": 1}
    job = _submit(env, tmp_path, submitted, "--tasks", "2", "--max-parallel", "1", "--max-idle", "1")
    assert _wait_for(lambda: len(Checkpoint() & key) == 1, timeout=90), _logs(tmp_path, job)
    subprocess.run(["scancel", "--signal=TERM", f"{job}_1"], check=True, timeout=30)
    assert _wait_done(job, timeout=150), f"job array {job} still running: {_active(job)}"
    logs = _logs(tmp_path, job)
    assert "SIGTERM received: finishing the current epoch" in logs[1], logs[1][-3000:]
    assert "stopped by signal" in logs[1]
    (row,) = (TrainedModel() & key).to_dicts()
    # task 2 took the released job and continued from task 1's checkpoint
    assert (
        row["output"]["resumed_from_epoch"] >= 1
        and row["output"]["start_epoch"] == row["output"]["resumed_from_epoch"]
    )
    assert row["output"]["epochs"] == 40
    assert f"[slurm {job}_2" in logs[2] and "done  TrainedModel" in logs[2]


def test_task_reaching_max_runtime_releases_its_job(cluster_db, tmp_path):
    import schemas
    from schemas import Checkpoint, TrainedModel

    env, submitted = cluster_db
    key = {**_register("toy_trainer", {"epochs": 400, "sleep": 0.1}), "seed": 1}
    started = time.time()
    job = _submit(env, tmp_path, submitted, "--tasks", "1", "--max-runtime", "15s")
    assert _wait_done(job, timeout=120), f"job array {job} still running: {_active(job)}"
    assert time.time() - started < 100  # long before the 10 min limit (and the 40 s of training)
    log = _logs(tmp_path, job)[1]
    assert "reached --max-runtime 15 s" in log, log[-3000:]
    assert len(TrainedModel()) == 0 and (Checkpoint() & key).to_dicts()[0]["epoch"] >= 1
    status = schemas.job_status().loc["TrainedModel"]
    assert status["pending"] == 1 and status["reserved"] == 0 and status["error"] == 0
