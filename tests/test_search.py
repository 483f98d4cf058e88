"""Hyper-parameter search (``sysid search``) against a real database with two worker processes.

The workers are ordinary ``sysid worker`` processes (polling, one thread each) started once per
module and backend; every test runs its own study on a tiny synthetic dataset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from sysid.search import _distributions
from sysid.search_spec import SearchSpecError, parse_spec

from .fixtures_db import REPO_ROOT

DATA_SIZES = {
    "n_neurons": 12,
    "n_train": 96,
    "n_validation": 32,
    "n_test_images": 6,
    "n_repeats": 2,
    "image_shape": (12, 16),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pipeline.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("search") / "static90002-1-1-synthetic", session="90002-1-1", **DATA_SIZES
    )


def spec_doc(dataset, name: str, **overrides) -> dict:
    """A small search over two parameters of a tiny model (3 epochs)."""
    doc = {
        "study": {"name": name, "comment": "test"},
        "seeds": [1],
        "dataset": {
            "fn": "pipeline.data.static_loaders",
            "config": {"paths": [str(dataset)], "batch_size": 32},
        },
        "model": {
            "fn": "pipeline.models.stacked_core_full_gauss_readout",
            "config": {"input_kern": 3, "hidden_kern": 3, "layers": 1, "gamma_input": 1.0},
        },
        "trainer": {
            "fn": "pipeline.training.standard_trainer",
            "config": {"max_iter": 3, "device": "cpu", "verbose": False, "progress": False},
        },
        "search_space": {
            "model.gamma_readout": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "model.hidden_channels": {"type": "int", "low": 2, "high": 6, "step": 2},
        },
        "n_trials": 6,
        "parallelism": 2,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": "none",
    }
    doc.update(overrides)
    return doc


@pytest.fixture(scope="module")
def workers(db, tmp_path_factory):
    """Two polling worker processes on the module's database (stopped with SIGTERM afterwards)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(SYSID_SCHEMA_PREFIX=db.prefix, PYTHONWARNINGS="ignore")
    if db.backend == "postgres":  # the embedded server of SYSID_HOME
        env = {k: v for k, v in env.items() if not k.startswith("DJ_")}
    command = [sys.executable, "-m", "sysid", "worker", "--sleep", "0.3", "--threads", "1", "--device", "cpu"]
    logs = [tmp_path_factory.mktemp("workers") / f"worker{i}.log" for i in range(2)]
    processes = [
        subprocess.Popen(
            command, env=env, cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=log.open("w")
        )
        for log in logs
    ]
    yield logs
    for p in processes:
        p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _trial_states(study_name: str) -> dict[int, str]:
    from schemas import search_tables as st

    study = st.load_optuna_study(study_name)
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def test_spec_ranges_and_keys_are_checked_without_a_database(dataset):
    bad = spec_doc(dataset, "bad")
    bad["search_space"] = {
        "model.gamma_readout": {"type": "float", "low": 1.0, "high": 0.1},
        "model.hidden_channels": {"type": "int", "low": 2.5, "high": 6},
        "model.init_sigma": {"type": "float", "low": 0.0, "high": 1.0, "log": True},
        "model.layers": {"type": "categorical", "choices": []},
        "optimizer.lr": {"type": "float", "low": 0.1, "high": 1.0},
    }
    bad["samplr"] = "tpe"
    with pytest.raises(SearchSpecError) as err:
        parse_spec(bad)
    text = str(err.value)
    for expected in (
        "'low' (1.0) must be below 'high'",
        "integer bounds",
        "log range needs 'low' > 0",
        "non-empty list",
        "optimizer.lr",
        "samplr",
    ):
        assert expected in text
    spec = parse_spec(spec_doc(dataset, "grid", sampler="grid", n_trials=6))
    grid = spec.grid()
    assert grid["model.hidden_channels"] == [2, 4, 6]
    assert grid["model.gamma_readout"] == [0.001, 0.01, 0.1] and spec.total_trials() == 6
    # a grid smaller than n_trials bounds the study
    assert parse_spec(spec_doc(dataset, "grid", sampler="grid", grid_points=2)).total_trials() == 4


def test_bad_spec_is_refused_before_anything_is_inserted(empty_db, dataset):
    import schemas
    from schemas import search_tables as st
    from sysid.search import SearchDriver

    doc = spec_doc(dataset, _name("unknown"))
    doc["search_space"]["model.hidden_chanels"] = {"type": "int", "low": 2, "high": 4}  # misspelt
    driver = SearchDriver(parse_spec(doc), schemas)
    with pytest.raises(SearchSpecError, match="hidden_chanels"):
        driver.prepare()
    clash = spec_doc(dataset, _name("clash"))
    clash["model"]["config"]["gamma_readout"] = 0.01  # searched and fixed at once
    with pytest.raises(SearchSpecError, match="gamma_readout"):
        SearchDriver(parse_spec(clash), schemas).prepare()
    for table in (st.Study, st.SearchTrial, schemas.Model, schemas.Dataset, schemas.Experiments):
        assert len(table()) == 0, table.__name__
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(st.optuna_storage())]
    assert doc["study"]["name"] not in names


def test_six_trials_each_trained_once_and_told(empty_db, dataset, workers):
    import schemas
    from schemas import search_tables as st
    from sysid.search import SearchDriver, study_summary, write_search_report

    name = _name("six")
    driver = SearchDriver(parse_spec(spec_doc(dataset, name)), schemas)
    result = driver.run(poll=0.3, timeout=150)
    assert result.done, result
    assert _trial_states(name) == {n: "COMPLETE" for n in range(6)}
    trials = st.search_trials(name)
    assert list(trials["trial_number"]) == list(range(6)) and set(trials["state"]) == {"complete"}
    # the value told is the trained model's score; every trial has its own trained model
    assert (trials["value"] - trials["score"]).abs().max() < 1e-9
    assert trials["model_hash"].nunique() == 6
    assert len(schemas.TrainedModel() & (schemas.Experiments.Restrictions() & {"experiment_name": name})) == 6
    assert schemas.errors("TrainedModel").empty
    summary = study_summary(name)
    assert summary["counts"]["complete"] == 6 and summary["best"]["value"] == pytest.approx(
        trials["value"].max()
    )
    # one round per poll: far below a training's time
    assert max(driver.step_seconds) < 10
    assert {p.name for p in write_search_report(name, empty_db_report_dir(name))} >= {
        "optimization_history.png",
        "slice.png",
    }


def empty_db_report_dir(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"sysid-{name}-"))


def _sysid(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "sysid", *args],
        env=env,
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_driver_killed_and_restarted_loses_nothing(empty_db, dataset, workers, sysid_env, tmp_path):
    import schemas
    from schemas import search_tables as st

    name = _name("restart")
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc(dataset, name, n_trials=5)))
    driver = _sysid(sysid_env, "search", str(spec_path), "--poll", "0.3")
    deadline = time.monotonic() + 90
    while len(st.TrialOutcome() & {"study_name": name}) < 1 and time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[1]
        time.sleep(0.3)
    driver.send_signal(signal.SIGKILL)  # no clean-up at all
    driver.communicate()
    # as if a driver died between asking Optuna and registering the trial, and one that died while
    # Optuna sampled the values (a trial without them)
    study = st.load_optuna_study(name)
    orphan = study.ask(_distributions(parse_spec(spec_doc(dataset, name))))
    half = study.ask(
        {
            "model.hidden_channels": _distributions(parse_spec(spec_doc(dataset, name)))[
                "model.hidden_channels"
            ]
        }
    )
    again = _sysid(sysid_env, "search", str(spec_path), "--poll", "0.3", "--timeout", "150")
    stdout, stderr = again.communicate(timeout=200)
    assert again.returncode == 0, stderr
    assert f"study {name!r}: maximize score; 5 complete of 5" in stdout and "best: trial" in stdout
    states = _trial_states(name)
    assert states == {n: "COMPLETE" for n in range(5)}
    assert orphan.number in states and half.number in states
    assert set(st.load_optuna_study(name).trials[half.number].params) == {
        "model.gamma_readout",
        "model.hidden_channels",
    }
    trials = st.search_trials(name)
    assert list(trials["trial_number"]) == list(range(5))
    assert trials["score"].notna().all() and (trials["value"] - trials["score"]).abs().max() < 1e-9
    runs = schemas.TrainedModel() & (schemas.Experiments.Restrictions() & {"experiment_name": name})
    assert len(runs) == trials["model_hash"].nunique()
    report = _sysid(sysid_env, "report", "--study", name, "--out", str(tmp_path / "report"))
    stdout, stderr = report.communicate(timeout=120)
    assert report.returncode == 0, stderr
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"optimization_history.png", "param_importances.png", "slice.png"} <= written, stdout
    listing = _sysid(sysid_env, "search", "status")
    stdout, stderr = listing.communicate(timeout=120)
    assert listing.returncode == 0, stderr
    assert name in stdout


def test_pruned_trial_is_recorded_and_consistent(empty_db, dataset, workers):
    import optuna

    import schemas
    from schemas import search_tables as st
    from sysid.search import SearchDriver

    name = _name("prune")
    doc = spec_doc(
        dataset,
        name,
        n_trials=3,
        parallelism=1,
        sampler={"name": "random", "seed": 0},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        search_space={"trainer.lr_init": {"type": "categorical", "choices": [1.0e-7, 2.0e-7, 0.05]}},
        enqueue=[{"trainer.lr_init": 1.0e-7}, {"trainer.lr_init": 2.0e-7}, {"trainer.lr_init": 0.05}],
    )
    doc["model"]["config"]["hidden_channels"] = 4
    # on this tiny dataset the initial model predicts best: two trials that keep it (the median's
    # start-up trials), then one whose large steps drop its validation correlation at epoch 1
    driver = SearchDriver(parse_spec(doc), schemas)
    assert driver.run(poll=0.3, timeout=120).done
    assert _trial_states(name) == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    outcome = (st.TrialOutcome() & {"study_name": name, "trial_number": 2}).to_dicts()[0]
    assert outcome["state"] == "pruned" and outcome["pruned_epoch"] == 1
    trial = (st.SearchTrial() & {"study_name": name, "trial_number": 2}).to_dicts()[0]
    key = {
        k: trial[k]
        for k in ("dataset_fn", "dataset_hash", "model_fn", "model_hash", "trainer_fn", "trainer_hash")
    }
    key["seed"] = 1
    # the worker stopped it after epoch 1 and stored it with its best state, like any trained model
    row = (schemas.TrainedModel() & key).to_dicts()[0]
    progress = (schemas.TrainingProgress() & key).to_dicts()
    assert [r["epoch"] for r in progress] == [1]
    assert row["output"]["epochs"] == 1 and len(row["output"]["val_correlation"]) == 1
    assert len(schemas.Checkpoint() & key) == 0
    # Optuna's value of a pruned trial is its last reported validation correlation: the progress row's
    frozen = st.load_optuna_study(name).trials[2]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.intermediate_values == {1: pytest.approx(progress[0]["val_correlation"])}
    assert outcome["value"] == pytest.approx(progress[0]["val_correlation"])
    view = st.search_trials(name)
    assert list(view["state"]) == ["complete", "complete", "pruned"]
    assert schemas.TrainedModel().load_model(key) is not None


def test_cli_dry_run(dataset, tmp_path):
    spec_path = tmp_path / "search.yaml"
    spec_path.write_text(yaml.safe_dump(spec_doc(dataset, "dry")))
    env = {**os.environ, "SYSID_SCHEMA_PREFIX": "unused_dry_"}
    out = subprocess.run(
        [sys.executable, "-m", "sysid", "search", str(spec_path), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "6 trials x 1 seed(s), 2 parameter(s), sampler tpe, pruner none: valid" in out.stdout


def test_example_spec_is_valid():
    from sysid.search_spec import load_spec, validate_spec

    spec = load_spec(REPO_ROOT / "examples" / "search.yaml")
    validate_spec(spec)
    assert "model.grid_mean_predictor.hidden_features" in {p.name for p in spec.parameters}
