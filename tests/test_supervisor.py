"""`sysid worker --gpus`: the supervisor's child processes, restarts and SIGTERM forwarding, for real.

The GPUs are fake (ids given by name, on a CPU machine): each child only sees its
``CUDA_VISIBLE_DEVICES``. The children are small Python scripts here, and real workers on a
database in the last test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sysid.supervisor import Supervisor, parse_gpus

REPO_ROOT = Path(__file__).resolve().parents[1]

#: a fake worker: logs its start, crashes on its first start when asked, else waits for SIGTERM
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    log, mode, tag = sys.argv[1], sys.argv[2], sys.argv[4]
    def write(event):
        with open(log, "a") as stream:
            stream.write(json.dumps({"event": event, "tag": tag, "pid": os.getpid(),
                                     "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    write("start")
    marker = log + "." + tag
    if mode == "crash" or (mode == "crash-once" and not os.path.exists(marker)):
        open(marker, "w").close()
        sys.exit(3)
    if mode == "exit0":
        sys.exit(0)
    signal.signal(signal.SIGTERM, lambda *a: (write("term"), sys.exit(0)))
    while True:
        time.sleep(0.05)
    """
)

SUPERVISE = textwrap.dedent(
    """
    import json, logging, sys
    from sysid.supervisor import Supervisor
    logging.basicConfig(level=logging.INFO)
    args = json.loads(sys.argv[1])
    code = Supervisor(args["command"], args["gpus"], per_gpu=args["per_gpu"],
                      max_restarts=args["max_restarts"], backoff_cap=0.3, poll=0.05).run()
    sys.exit(code)
    """
)


def _events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_for(condition, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _start_supervisor(tmp_path: Path, mode: str, gpus, per_gpu=1, max_restarts=3):
    log = tmp_path / "events.jsonl"
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    args = {
        "command": [sys.executable, str(child), str(log), mode],  # + "--log-tag <slot>"
        "gpus": gpus,
        "per_gpu": per_gpu,
        "max_restarts": max_restarts,
    }
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, json.dumps(args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, log


def test_one_child_per_gpu_slot_restarted_after_a_crash_and_sigterm_forwarded(tmp_path):
    supervisor, log = _start_supervisor(tmp_path, "crash-once", gpus=["0", "1"], per_gpu=2)
    slots = {"gpu0.0", "gpu0.1", "gpu1.0", "gpu1.1"}

    def restarted():
        starts = [e["tag"] for e in _events(log) if e["event"] == "start"]
        return all(starts.count(tag) == 2 for tag in slots)

    assert _wait_for(restarted), (_events(log), supervisor.poll())
    time.sleep(0.3)  # the restarted children install their SIGTERM handler
    supervisor.send_signal(signal.SIGTERM)
    _, stderr = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, stderr
    events = _events(log)
    starts = [e for e in events if e["event"] == "start"]
    # each slot sees its own GPU only, started twice (the crash, then the restart), never again
    assert sorted((e["tag"], e["gpu"]) for e in starts) == sorted(
        [(tag, tag[3]) for tag in slots for _ in range(2)]
    )
    terms = [e for e in events if e["event"] == "term"]
    assert sorted(e["tag"] for e in terms) == sorted(slots)  # every running child got SIGTERM once
    second_starts = {e["tag"]: e["pid"] for e in starts[len(slots) :]}
    assert {e["tag"]: e["pid"] for e in terms} == second_starts
    assert "crashed (exit 3" in stderr and "restart 1/3" in stderr
    assert "SIGTERM received: forwarding SIGTERM to 4 worker(s)" in stderr


def test_a_child_crashing_again_and_again_is_given_up(tmp_path):
    supervisor, log = _start_supervisor(tmp_path, "crash", gpus=["3"], max_restarts=2)
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 1
    assert [e["gpu"] for e in _events(log)] == ["3", "3", "3"]  # first start + 2 restarts
    assert "not restarted again" in stderr and "gave up on worker(s) gpu3.0" in stderr


def test_children_that_finish_are_not_restarted(tmp_path):
    supervisor, log = _start_supervisor(tmp_path, "exit0", gpus=["0", "1"])
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0, stderr
    assert sorted(e["tag"] for e in _events(log)) == ["gpu0.0", "gpu1.0"]


def test_max_runtime_sends_sigterm_to_every_child(tmp_path):
    log = tmp_path / "events.jsonl"
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    started = time.monotonic()
    code = Supervisor(
        [sys.executable, str(child), str(log), "wait"], ["0", "1"], max_runtime=2.0, poll=0.05
    ).run()
    assert code == 0 and time.monotonic() - started < 20
    assert sorted(e["tag"] for e in _events(log) if e["event"] == "term") == ["gpu0.0", "gpu1.0"]


def test_parse_gpus(monkeypatch):
    assert parse_gpus("0,1,3") == ["0", "1", "3"]
    assert parse_gpus(" 2 ") == ["2"]
    assert parse_gpus("GPU-8f2a1c3e-1111-2222-3333-444455556666") == [
        "GPU-8f2a1c3e-1111-2222-3333-444455556666"
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # e.g. set by SLURM for the task's GPUs
    assert parse_gpus("all") == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="no GPU found.*--device cpu"):
        parse_gpus("all")
    with pytest.raises(ValueError, match="twice"):
        parse_gpus("0,0")
    with pytest.raises(ValueError, match="invalid --gpus 'gpu0'"):
        parse_gpus("gpu0")
    with pytest.raises(ValueError, match="per_gpu"):
        Supervisor(["true"], ["0"], per_gpu=0)


def test_gpus_option_checks(monkeypatch):
    from click.testing import CliRunner

    from sysid.cli import cli

    result = CliRunner().invoke(cli, ["worker", "--gpus", "0,1", "--device", "cuda:1"])
    assert result.exit_code == 2 and "use --device cuda or auto" in result.output
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = CliRunner().invoke(cli, ["worker", "--gpus", "all"])
    assert result.exit_code == 1 and "no GPU found" in result.output


def test_sysid_worker_gpus_trains_every_key_once_with_one_worker_per_gpu(empty_db, sysid_env):
    """Real workers under the supervisor: two fake GPUs, four toy models, each trained once."""
    from schemas import TrainedModel, TrainingProgress
    from tests.test_schemas_training import _register

    _register({"epochs": 2, "sleep": 0.2}, seeds=(1, 2, 3, 4))
    env = dict(sysid_env, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        [sys.executable, "-m", "sysid", "worker", "--gpus", "0,1", "--once", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(TrainedModel()) == 4 and len(TrainingProgress()) == 4 * 2
    lines = result.stderr.splitlines()
    for gpu in ("0", "1"):
        # the child's own log: it saw only its GPU, and its lines carry the slot's tag
        assert any(
            f"[gpu{gpu}.0] sysid.worker: worker started" in line and f"CUDA_VISIBLE_DEVICES={gpu}" in line
            for line in lines
        ), result.stderr
        assert any(f"worker gpu{gpu}.0 finished (exit 0" in line for line in lines)


def test_sigterm_to_the_supervisor_checkpoints_and_releases_the_real_workers_jobs(empty_db, sysid_env):
    """As `docker compose stop` does: SIGTERM reaches the supervisor, each training checkpoints and is released."""
    import schemas
    from schemas import Checkpoint, TrainedModel
    from tests.test_schemas_training import _register

    keys = _register({"epochs": 300, "sleep": 0.1}, seeds=(1, 2))
    env = dict(sysid_env, OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "sysid", "worker", "--gpus", "0,1", "--threads", "1", "--sleep", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for(lambda: len(Checkpoint() & keys) == 2, timeout=120), "no checkpoints appeared"
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=120)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, stderr[-3000:]
    assert stderr.count("SIGTERM received: finishing the current epoch") == 2, stderr[-3000:]
    assert len(TrainedModel()) == 0
    status = schemas.job_status().loc["TrainedModel"]
    assert (status["pending"], status["reserved"], status["error"]) == (2, 0, 0), (
        f"{status.to_dict()}\n{schemas.errors('TrainedModel').to_string()}\n{stderr[-3000:]}"
    )
    assert "restart" not in stderr.split("SIGTERM received: forwarding")[1]  # nothing restarted
