"""`sysid slurm` without a cluster: the batch script's directives, secrets, refusals and helpers.

The script is run for real on a single-node cluster in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from sysid import slurm
from sysid.cli import cli

PASSWORD = "s3cret-Pa55"
DB = {"DJ_HOST": "db.cluster.org", "DJ_USER": "alice", "DJ_PASS": PASSWORD}


def _invoke(args, env, cwd: Path):
    unset = {name: None for name in os.environ if name.startswith(("DJ_", "SLURM_"))}
    runner = CliRunner()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, ["slurm", *args], env={**unset, **env})
    finally:
        os.chdir(previous)


def _directives(script: str) -> dict[str, str]:
    found = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            name, _, value = line[len("#SBATCH --") :].partition("=")
            found[name] = value
    return found


def test_script_runs_an_array_of_gpu_workers_without_writing_the_password(tmp_path):
    result = _invoke(
        ["--tasks", "6", "--max-parallel", "2", "--time", "8:00:00", "--signal-margin", "5m"]
        + ["--partition", "gpu", "--account", "lab", "--qos", "long", "--restrict", "grid1"],
        DB,
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    script = (tmp_path / "sysid-worker.sbatch").read_text()
    assert PASSWORD not in script
    options = _directives(script)
    assert options["array"] == "1-6%2"
    assert options["gres"] == "gpu:1"
    assert options["time"] == "8:00:00" and options["signal"] == "TERM@300"
    assert (options["partition"], options["account"], options["qos"]) == ("gpu", "lab", "long")
    # the settings travel by name; sbatch reads their values from the submitting environment
    exported = options["export"].split(",")
    assert {"DJ_HOST", "DJ_USER", "DJ_PASS"} <= set(exported) and "NONE" not in exported
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) for name in exported)
    assert options["output"] == f"{tmp_path / 'slurm-logs'}/%x-%A_%a.out"
    (srun,) = [line for line in script.splitlines() if line.startswith("exec srun")]
    assert " -m sysid worker --device cuda " in srun and "--restrict grid1" in srun
    assert "--max-idle 3" in srun
    assert (tmp_path / "sysid-worker.sbatch").stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(tmp_path / "sysid-worker.sbatch")], check=True)


def test_cpu_only_and_multi_gpu_tasks(tmp_path):
    result = _invoke(["--cpu", "--cpus-per-task", "4", "--out", "cpu.sbatch"], DB, tmp_path)
    assert result.exit_code == 0, result.output
    script = (tmp_path / "cpu.sbatch").read_text()
    options = _directives(script)
    assert "gres" not in options and options["cpus-per-task"] == "4" and options["array"] == "1-4"
    assert "worker --device cpu" in script and 'OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"' in script

    result = _invoke(["--gpus-per-task", "4", "--per-gpu", "2", "--out", "multi.sbatch"], DB, tmp_path)
    assert result.exit_code == 0, result.output
    script = (tmp_path / "multi.sbatch").read_text()
    assert _directives(script)["gres"] == "gpu:4"
    assert "worker --gpus all --per-gpu 2" in script  # one supervised worker per GPU of the task


def test_apptainer_container_runs_sysid_inside(tmp_path):
    result = _invoke(["--container", "/images/sysid.sif"], DB, tmp_path)
    assert result.exit_code == 0, result.output
    script = (tmp_path / "sysid-worker.sbatch").read_text()
    assert (
        "exec srun --kill-on-bad-exit=1 apptainer exec --nv /images/sysid.sif sysid worker --device cuda"
        in script
    )


def test_embedded_database_is_refused_with_what_to_set(tmp_path):
    result = _invoke([], {}, tmp_path)
    assert result.exit_code == 1
    assert (
        "embedded PostgreSQL server" in result.output and "Set DJ_HOST, DJ_USER and DJ_PASS" in result.output
    )
    assert not (tmp_path / "sysid-worker.sbatch").exists()
    result = _invoke([], {"DJ_HOST": "/tmp/pgsocket", "DJ_USER": "me", "DJ_BACKEND": "postgresql"}, tmp_path)
    assert result.exit_code == 1 and "socket folder" in result.output
    result = _invoke([], {**DB, "DJ_HOST": "127.0.0.1"}, tmp_path)
    assert result.exit_code == 0 and "warning: DJ_HOST=127.0.0.1 is this machine" in result.output


def test_bad_options_are_named(tmp_path):
    result = _invoke(["--time", "4:00:00", "--signal-margin", "5h"], DB, tmp_path)
    assert result.exit_code == 1 and "below the time limit" in result.output
    result = _invoke(["--time", "soon"], DB, tmp_path)
    assert result.exit_code == 1 and "invalid time limit 'soon'" in result.output
    result = _invoke(["--partition", "a b"], DB, tmp_path)
    assert result.exit_code == 1 and "invalid partition" in result.output


def test_env_file_is_private_and_read_by_path(tmp_path):
    env_file = tmp_path / "private" / "sysid.env"
    result = _invoke(["--env-file", str(env_file)], DB, tmp_path)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"export DJ_PASS={PASSWORD}" in env_file.read_text()
    script = (tmp_path / "sysid-worker.sbatch").read_text()
    assert PASSWORD not in script and f"env_file={env_file}" in script
    # the script's own lines up to the worker: they load the file and check the settings
    env_lines = script.split("exec srun")[0].split("set -euo pipefail")[1]
    out = subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{env_lines}\necho "$DJ_HOST $DJ_USER $DJ_PASS"'],
        env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"db.cluster.org alice {PASSWORD}")
    env_file.chmod(0o644)  # readable by others: the script refuses it, sysid slurm too
    out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{env_lines}"], capture_output=True, text=True)
    assert out.returncode == 1 and "readable by its owner only" in out.stderr
    result = _invoke(["--env-file", str(env_file)], DB, tmp_path)
    assert result.exit_code == 1 and "readable by others" in result.output


def test_script_says_what_is_missing_when_submitted_without_settings(tmp_path):
    assert _invoke([], DB, tmp_path).exit_code == 0
    script = (tmp_path / "sysid-worker.sbatch").read_text()
    checks = script.split("exec srun")[0].split("set -euo pipefail")[1]
    out = subprocess.run(
        ["bash", "-c", checks], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    assert (
        out.returncode != 0
        and "DJ_HOST: is not set: submit from a shell with the database settings" in out.stderr
    )


def test_submit_without_sbatch_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(FileNotFoundError, match="sbatch not found"):
        slurm.submit(tmp_path / "x.sbatch")


def test_helpers():
    assert slurm.slurm_tag(
        {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3"}
    ) == ("slurm 10_3 (job 12)")
    assert slurm.slurm_tag({"SLURM_JOB_ID": "12"}) == "slurm 12" and slurm.slurm_tag({}) is None
    assert [slurm.time_limit_seconds(t) for t in ("90", "10:30", "4:00:00", "1-12", "2-0:0:10")] == [
        5400,
        630,
        14400,
        129600,
        172810,
    ]
    with pytest.raises(ValueError, match="invalid time limit"):
        slurm.time_limit_seconds("4h")
    names = slurm.exported_names(
        {**DB, "SYSID_HOME": "/here", "SYSID_SCHEMA_PREFIX": "x_", "PATH": "/bin", "OTHER": "1"}
    )
    assert names == ["DJ_HOST", "DJ_USER", "DJ_PASS", "SYSID_SCHEMA_PREFIX", "PATH"]  # SYSID_HOME is local


def test_apptainer_definition_is_built_from_the_compose_worker_image():
    import yaml

    root = Path(__file__).resolve().parents[1]
    text = (root / "docker" / "apptainer.def").read_text()
    header = dict(line.split(":", 1) for line in text.splitlines() if re.match(r"^(Bootstrap|From):", line))
    image = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]["worker"]["image"]
    assert header["Bootstrap"].strip() == "docker-daemon" and header["From"].strip() == image
    assert re.search(r"^%runscript\n\s+exec sysid \"\$@\"", text, re.M)


def test_secrets_folder_is_read_by_the_job_at_run_time(tmp_path):
    secrets = tmp_path / ".secrets"
    secrets.mkdir()
    (secrets / "database.password").write_text(PASSWORD)
    (secrets / "database.password").chmod(0o600)
    env = {"DJ_HOST": "db.cluster.org", "DJ_USER": "alice"}  # no DJ_PASS in the environment
    result = _invoke(["--secrets-dir", str(secrets)], env, tmp_path)
    assert result.exit_code == 0, result.output
    script = (tmp_path / "sysid-worker.sbatch").read_text()
    assert PASSWORD not in script and f"secrets_dir={secrets}" in script
    assert "DJ_PASS" not in _directives(script)["export"].split(",")
    lines = script.split("exec srun")[0].split("set -euo pipefail")[1]
    out = subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{lines}\necho "$DJ_USER:$DJ_PASS"'],
        env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"alice:{PASSWORD}")
    (secrets / "database.password").chmod(0o644)
    result = _invoke(["--secrets-dir", str(secrets)], env, tmp_path)
    assert result.exit_code == 1 and "readable by others" in result.output
    result = _invoke(["--secrets-dir", str(tmp_path / "nowhere")], env, tmp_path)
    assert result.exit_code == 1 and "not a DataJoint secrets folder" in result.output
