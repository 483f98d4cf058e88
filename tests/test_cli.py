"""The ``sysid`` command line, end to end, in subprocesses on the embedded PostgreSQL server.

register → two workers in parallel → status → results → report; a worker stopped by SIGTERM
mid-training checkpoints and releases its job, and a second worker resumes it from the checkpoint.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.fixtures_db import quiet_datajoint

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["db", "db start", "db stop", "db status", "db url", "register", "worker", "status", "errors"]
COMMANDS += ["results", "report", "demo", "ensemble", "ensemble create", "ensemble list", "slurm"]
PNG_NAMES = {"learning_curves.png", "correlation_hist.png", "rf_positions.png", "correlation_vs_oracle.png"}


def run_sysid(args, env, timeout=120, check=True):
    """Run ``python -m sysid ARGS``; return the completed process (stdout and stderr as text)."""
    result = subprocess.run(
        [sys.executable, "-m", "sysid", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"sysid {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def invoke(args, env):
    """Run the CLI in this process (same code path, no interpreter start-up): a click Result."""
    from click.testing import CliRunner

    from sysid.cli import cli

    unset = {name: None for name in os.environ if name.startswith("DJ_")}
    return CliRunner().invoke(cli, args, env={**unset, **env})


def start_sysid(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "sysid", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def subprocess_env(prefix: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}  # embedded server
    env.update(
        SYSID_HOME=str(home),
        SYSID_SCHEMA_PREFIX=prefix,
        SYSID_CHECKPOINT_EVERY="1",
        PYTHONWARNINGS="ignore",
        COLUMNS="250",  # rich tables wide enough to read in assertions
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


@pytest.fixture(scope="module")
def cli(embedded_home, tmp_path_factory):
    """A fresh schema prefix on the session's embedded server, a tiny dataset and helpers."""
    quiet_datajoint()
    import schemas
    from pipeline.data.synthetic import make_synthetic_dataset

    prefix = f"clitest_{uuid.uuid4().hex[:8]}_"
    folder = tmp_path_factory.mktemp("cli")
    data = make_synthetic_dataset(
        folder / "static90001-1-1-cli",
        n_neurons=12,
        n_train=120,
        n_validation=30,
        n_test_images=6,
        n_repeats=3,
        image_shape=(16, 24),
        seed=3,
    )
    env = subprocess_env(prefix, embedded_home)

    def activate():
        return schemas.activate(prefix, backend="embedded")

    activate()
    yield type(
        "Cli",
        (),
        {"env": env, "data": data, "folder": folder, "prefix": prefix, "activate": staticmethod(activate)},
    )
    activate()
    schemas.clear_stop()
    schemas.drop_all()


def grid(data: Path, experiment: str, max_iter: int, seeds, patience: int = 5) -> dict:
    core = {"hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 1, "gamma_input": 1.0}
    return {
        "experiment": experiment,
        "seeds": seeds,
        "dataset": {"fn": "pipeline.data.static_loaders", "config": {"paths": [str(data)], "batch_size": 30}},
        "model": {
            "fn": "pipeline.models.stacked_core_full_gauss_readout",
            "config": {**core, "init_sigma": 0.1, "grid": {"gamma_readout": [0.01, 0.1]}},
        },
        "trainer": {
            "fn": "pipeline.training.standard_trainer",
            "config": {"max_iter": max_iter, "device": "cpu", "patience": patience, "progress": False},
        },
    }


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


# ------------------------------------------------------------------------------------- help


def test_every_command_has_help():
    from click.testing import CliRunner

    from sysid.cli import cli

    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage: " in result.output and "Example" in result.output, command
    assert "Examples" in runner.invoke(cli, ["register", "--help"]).output
    assert "grid:" in runner.invoke(cli, ["register", "--help"]).output


def test_console_script_runs_in_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "sysid", "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0
    for command in ("register", "worker", "status", "results", "report", "demo", "db", "errors"):
        assert command in result.stdout


def test_usage_errors_exit_non_zero_with_one_line():
    from click.testing import CliRunner

    from sysid.cli import cli

    result = CliRunner().invoke(cli, ["worker", "--max-jobs", "0"])
    assert result.exit_code == 2 and "--max-jobs" in result.output
    result = CliRunner().invoke(cli, ["register", "/no/such/file.yaml"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: registration file not found: /no/such/file.yaml"


# ---------------------------------------------------------------------------- end to end


def test_bad_file_inserts_nothing(cli):
    import schemas

    doc = grid(cli.data, "bad", 2, [1])
    doc["model"]["config"]["grid"]["hidden_chanels"] = [4]  # a typo: every grid point is invalid
    doc["trainer"]["fn"] = "pipeline.training.no_such_trainer"
    result = run_sysid(["register", str(write_yaml(cli.folder / "bad.yaml", doc))], cli.env, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "hidden_chanels" in result.stderr and "no_such_trainer" in result.stderr
    cli.activate()
    # the valid dataset entry was not inserted either: validation happens before any insert
    assert len(schemas.Dataset()) == 0 and len(schemas.Model()) == 0 and len(schemas.Seed()) == 0


def test_register_workers_status_results_report(cli):
    import schemas

    path = write_yaml(cli.folder / "grid.yaml", grid(cli.data, "quick", 2, [1, 2]))
    dry = invoke(["register", str(path), "--dry-run"], cli.env)
    assert dry.exit_code == 0 and "dry run" in dry.output and "= 4 model(s)" in dry.output
    cli.activate()
    assert len(schemas.Model()) == 0

    registered = run_sysid(["register", str(path)], cli.env)
    assert "= 4 model(s) to train in experiment 'quick'" in registered.stdout
    cli.activate()
    hashes = {row["model_hash"] for row in schemas.Model().to_dicts()}
    assert len(hashes) == 2 and all(h[:12] in registered.stdout for h in hashes)

    workers = [
        start_sysid(["worker", "--once", "--threads", "1", "--device", "cpu"], cli.env) for _ in range(2)
    ]
    logs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    trained = [line for log in logs for line in log.splitlines() if "done  TrainedModel" in line]
    assert len(trained) == 4, "\n".join(logs)  # every key once, none twice
    assert len({re.sub(r"^.*TrainedModel ", "", t).split(" (")[0] for t in trained}) == 4
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", t) for t in trained)  # timestamped
    assert all("seed=" in t and "model=stacked_core_full_gauss_readout:" in t for t in trained)
    # an ensemble of every seed of each model, and an MEI method from YAML; one more worker run
    ensembles = {}
    for model_hash in sorted(hashes):
        created = run_sysid(
            ["ensemble", "create", "--model", model_hash[:10], "--comment", "both seeds"], cli.env
        )
        assert "2 member(s)" in created.stdout and "seed=1" in created.stdout and "seed=2" in created.stdout
        ensembles[model_hash] = created.stdout.split()[1]
    # the same members again: the same ensemble, nothing new
    again = invoke(
        ["ensemble", "create", "--model", sorted(hashes)[0][:10], "--seed", "2", "--seed", "1"], cli.env
    )
    assert again.exit_code == 0 and again.output.split()[1] == ensembles[sorted(hashes)[0]]
    refused = invoke(["ensemble", "create", "--model", "zz"], cli.env)
    assert refused.exit_code == 1 and "hexadecimal" in refused.output
    mei_file = write_yaml(
        cli.folder / "meis.yaml",
        {
            "mei_method": {"fn": "pipeline.mei.optimize_meis", "config": {"norm": 5.0, "max_steps": 10}},
            "mei_seeds": [0],
        },
    )
    registered_meis = run_sysid(["register", str(mei_file)], cli.env)
    assert "1 MEI method(s)" in registered_meis.stdout
    mei_worker = start_sysid(["worker", "--once", "--threads", "1", "--device", "cpu"], cli.env)
    logs.append(mei_worker.communicate(timeout=180)[0])
    assert mei_worker.returncode == 0, logs[-1]
    listed = run_sysid(["ensemble", "list"], cli.env).stdout
    assert "ensembles (2)" in listed and "both seeds" in listed
    # every populated table logs each of its jobs from its own make steps: one start, one done per row
    cli.activate()
    assert len(schemas.Ensemble()) == 2 and len(schemas.MEI()) == 2 and len(schemas.EnsembleScore()) == 2
    lines = [line for log in logs for line in log.splitlines()]
    # the transfer tables have nothing to do here (no transfer registered): their logs are
    # tested in tests/test_schemas_transfer.py
    for name, table in schemas.computed_tables().items():
        if name.startswith("Transfer"):
            assert len(table) == 0, name
            continue
        starts = [line for line in lines if f"start {name} " in line]
        dones = [line for line in lines if f"done  {name} " in line]
        assert len(starts) == len(dones) == len(table) > 0, (name, "\n".join(logs))

    status = run_sysid(["status"], cli.env).stdout
    assert re.search(r"TrainedModel\s*│\s*4\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0", status), status
    assert re.search(r"ReadoutParameters\s*│\s*4\s*│", status), status
    assert "running jobs: none" in status

    csv_path = cli.folder / "results.csv"
    results = run_sysid(["results", "--csv", str(csv_path)], {**cli.env, "COLUMNS": "200"})
    assert "trained models (4)" in results.stdout
    assert "gamma_readout" in results.stdout  # the grid parameter is a column (header without "model.")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4 and "model.gamma_readout" in rows[0]
    assert {r["model_hash"] for r in rows} == hashes and {r["seed"] for r in rows} == {"1", "2"}
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    filtered = invoke(["results", "--filter", "seed == 2", "--csv", str(csv_path)], cli.env)
    assert "trained models (2)" in filtered.output and len(list(csv.DictReader(csv_path.open()))) == 2
    bad_filter = invoke(["results", "--filter", "no_such_column > 1"], cli.env)
    assert bad_filter.exit_code == 1 and "bad --filter expression" in bad_filter.output

    out = cli.folder / "report"
    report = run_sysid(["report", "--best", "--out", str(out)], cli.env)
    assert f"score {max(scores):.3f}" in report.stdout
    assert {p.name for p in out.glob("*.png")} == PNG_NAMES | {"meis.png"}
    assert all(p.stat().st_size > 5000 for p in out.glob("*.png"))
    some_hash = sorted(hashes)[0]
    one = invoke(["report", f"{some_hash[:10]},seed=1", "--out", str(cli.folder / "one")], cli.env)
    assert one.exit_code == 0 and some_hash[:8] in one.output
    ambiguous = invoke(["report", some_hash[:10], "--out", str(cli.folder / "x")], cli.env)
    assert ambiguous.exit_code == 1 and "2 trained models match" in ambiguous.output

    assert "(no errors)" in invoke(["errors"], cli.env).output


def _latest_epoch(schemas, key) -> int:
    rows = (schemas.TrainingProgress() & key).to_dicts()
    return max((r["epoch"] for r in rows), default=0)


def test_sigterm_checkpoints_and_another_worker_resumes(cli):
    import schemas

    doc = grid(cli.data, "long", 25, [7], patience=100)
    doc["model"]["config"]["grid"] = {"gamma_readout": [0.05]}
    run_sysid(["register", str(write_yaml(cli.folder / "long.yaml", doc))], cli.env)
    cli.activate()
    key = schemas.Experiments.experiment_keys("long").to_dicts()[0]

    first = start_sysid(
        ["worker", "--once", "--restrict", "long", "--threads", "1", "--device", "cpu"], cli.env
    )
    deadline = time.monotonic() + 120
    while _latest_epoch(schemas, key) < 2:
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "training did not reach epoch 2"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    log = first.communicate(timeout=60)[0]
    assert first.returncode == 0, log
    assert "SIGTERM received" in log and "stopped by signal" in log
    assert re.search(
        r"interrupted TrainedModel .*seed=7 after [\d.]+ s: checkpoint saved, job released", log
    ), log

    checkpoint = (schemas.Checkpoint() & key).to_dicts()
    assert len(checkpoint) == 1 and checkpoint[0]["epoch"] >= 2, log
    stopped_at = checkpoint[0]["epoch"]
    assert len(schemas.TrainedModel() & key) == 0
    job = (schemas.TrainedModel().jobs & key).to_dicts()
    assert [j["status"] for j in job] == ["pending"], job  # released, not an error

    second = start_sysid(
        ["worker", "--once", "--restrict", "long", "--threads", "1", "--device", "cpu"], cli.env
    )
    log2 = second.communicate(timeout=180)[0]
    assert second.returncode == 0, log2
    cli.activate()
    output = (schemas.TrainedModel() & key).to_dicts()[0]["output"]
    assert output["resumed_from_epoch"] == stopped_at > 0
    assert _latest_epoch(schemas, key) == 25
    assert len(schemas.Checkpoint() & key) == 0


def test_db_commands_manage_their_own_server(tmp_path_factory):
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="sysid-cli-db-"))
    home.chmod(0o755)  # as root the server runs as the user "pgserver", who must reach the folder
    env = subprocess_env("clidb_", home)
    try:
        assert "not created yet" in run_sysid(["db", "status"], env).stdout
        started = run_sysid(["db", "start"], env).stdout
        assert "embedded PostgreSQL running" in started and str(home) in started
        url = run_sysid(["db", "url"], env).stdout
        assert "export DJ_BACKEND=postgresql" in url and "export DJ_HOST=" in url
        assert re.search(r"postgresql://postgres@/postgres\?host=", url)
        assert "running" in run_sysid(["db", "status"], env).stdout
        assert "stopped" in run_sysid(["db", "stop"], env).stdout
        assert "stopped" in run_sysid(["db", "status"], env).stdout
    finally:
        run_sysid(["db", "stop"], env, check=False)


def test_errors_are_listed_retried_and_ignored(cli):
    import schemas

    cli.activate()
    key = schemas.Dataset.add_entry(
        "pipeline.data.static_loaders", {"paths": [str(cli.folder / "missing")], "batch_size": 8}
    )
    schemas.DataInfo().populate(key, reserve_jobs=True, suppress_errors=True)
    listed = invoke(["errors"], cli.env)
    assert listed.exit_code == 0 and "DataInfo" in listed.output and "missing" in listed.output
    retried = invoke(["errors", "--retry"], cli.env)
    assert "1 job(s) set back to pending" in retried.output
    assert len(schemas.errors()) == 0
    schemas.DataInfo().populate(key, reserve_jobs=True, suppress_errors=True)
    assert "1 job(s) ignored" in invoke(["errors", "--ignore"], cli.env).output
    assert len(schemas.DataInfo().jobs & "status='ignore'") == 1
    assert invoke(["errors", "--retry", "--ignore"], cli.env).exit_code == 2


def test_demo_runs_end_to_end(embedded_home, tmp_path):
    quiet_datajoint()
    import schemas

    prefix = f"clidemo_{uuid.uuid4().hex[:8]}_"
    env = subprocess_env(prefix, embedded_home)
    try:
        result = run_sysid(
            ["demo", "--workers", "2", "--epochs", "1", "--out", str(tmp_path)], env, timeout=300
        )
        assert "trained models (4)" in result.stdout, result.stdout + result.stderr
        assert "demo finished" in result.stdout
        assert {p.name for p in (tmp_path / "report").glob("*.png")} == PNG_NAMES
        assert (tmp_path / "demo_grid.yaml").is_file()
    finally:
        schemas.activate(prefix, backend="embedded")
        schemas.drop_all()
