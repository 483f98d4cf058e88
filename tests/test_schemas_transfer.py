"""Transfer learning in the database: recipes, sources, tasks and transferred models, filled by workers.

A source model is trained on sessions A-C of small synthetic multi-session data (every session's
neurons read the same Gabor-energy features); transfers go to session D with a frozen and with a
fine-tuned core. Real databases (embedded PostgreSQL, and MariaDB when configured), real builder and
trainer, worker subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.fixtures_db import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore::schemas.configs.DuplicateEntryWarning")

MODEL_CONFIG = dict(
    hidden_channels=8,
    input_kern=7,
    hidden_kern=3,
    layers=2,
    gamma_input=1.0,
    gamma_readout=0.1,
    init_sigma=0.1,
    init_mu_range=0.3,
)
MODEL_FN = "pipeline.models.stacked_core_full_gauss_readout"
TRAINER_FN = "pipeline.training.standard_trainer"
QUICK = dict(device="cpu", max_iter=3, patience=1, lr_decay_steps=1, verbose=False, progress=False)
#: the targets' trainer: always 3 epochs, the last state kept
TARGET = dict(QUICK, patience=10, restore_best=False)
#: a trainer that always runs its 60 epochs (long enough to kill a worker in the middle)
LONG = dict(device="cpu", max_iter=60, patience=100, lr_decay_steps=1, verbose=False, progress=False)

WORKER = """
import json, os, sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import schemas
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
result = schemas.TransferredModel.populate(reserve_jobs=True, suppress_errors=True)
print("RESULT", json.dumps({"success_count": result["success_count"], "interrupted": result.get("interrupted", False)}))
sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    from pipeline.data.synthetic import make_multi_session_datasets

    return make_multi_session_datasets(
        tmp_path_factory.mktemp("transfer-sessions"),
        n_sessions=4,
        n_neurons=[12, 10, 10, 8],
        n_train=[60, 60, 60, 120],
        n_validation=20,
        n_test_images=4,
        n_repeats=2,
        image_shape=(18, 32),
    )


def _start(env):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER],
        env=env,
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"worker printed no result; stderr:\n{stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def _wait_for(condition, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _source(sessions, model_config=None):
    """Register and train the source model on sessions A-C; return its TrainedModel key."""
    from schemas import DataInfo, Dataset, Model, Seed, TrainedModel, Trainer

    Seed.insert1({"seed": 1}, skip_duplicates=True)
    key = {
        **Dataset.add_entry(
            "pipeline.data.static_loaders",
            {"paths": [str(p) for p in sessions[:3]], "batch_size": 16},
            skip_duplicates=True,
        ),
        **Model.add_entry(MODEL_FN, model_config or MODEL_CONFIG, skip_duplicates=True),
        **Trainer.add_entry(TRAINER_FN, QUICK, skip_duplicates=True),
        "seed": 1,
    }
    DataInfo.populate(key)
    TrainedModel.populate(key)
    assert len(TrainedModel() & key) == 1
    return key


def _target(sessions, trainer=TARGET, model_config=None):
    from schemas import DataInfo, Dataset, Model, Trainer

    keys = {
        "dataset": Dataset.add_entry(
            "pipeline.data.static_loaders",
            {"paths": [str(sessions[3])], "batch_size": 16},
            skip_duplicates=True,
        ),
        "model": Model.add_entry(MODEL_FN, model_config or MODEL_CONFIG, skip_duplicates=True),
        "trainer": Trainer.add_entry(TRAINER_FN, trainer, skip_duplicates=True),
    }
    DataInfo.populate(keys["dataset"])
    return keys


def _sql(conn, query):
    cursor = conn.query(query)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def test_frozen_and_fine_tuned_transfers_by_two_workers(empty_db, worker_env, sessions):
    import schemas
    from schemas import (
        Transfer,
        TransferProgress,
        TransferredModel,
        TransferredReadoutParameters,
        TransferredScore,
        register_transfer,
    )
    from schemas._dj_compat import quote_identifier

    source = _source(sessions)
    target = _target(sessions)
    frozen = Transfer.add_recipe({"freeze_core": True})
    tuned = Transfer.add_recipe({"freeze_core": False, "core_lr": 0.001})
    keys = [register_transfer(source, **target, seed=3, recipe=recipe) for recipe in (frozen, tuned)]
    workers = [_start(worker_env) for _ in range(2)]
    results = [_result(w) for w in workers]
    errors = (TransferredModel().jobs & "status='error'").to_dicts()
    assert sum(r["success_count"] for r in results) == 2, [e["error_message"] for e in errors]
    for key in keys:  # each trained once, by one worker: one progress row per epoch
        epochs = (TransferredModel() & key).to_dicts()[0]["output"]["epochs"]
        assert [p["epoch"] for p in (TransferProgress() & key).to_dicts(order_by="epoch")] == list(
            range(1, epochs + 1)
        )
    schemas.populate_all(reserve_jobs=False)
    assert len(TransferredScore()) == 2 and len(TransferredReadoutParameters.Unit()) == 2 * 8

    source_state = schemas.TrainedModel.fetch_state(source)
    frozen_state = TransferredModel.fetch_state(keys[0])
    tuned_state = TransferredModel.fetch_state(keys[1])
    core_keys = [k for k in source_state if k.startswith("core.")]
    for k in core_keys:  # weights and batch-norm statistics stay with a frozen core
        torch.testing.assert_close(frozen_state[k], source_state[k])
    outputs = [(TransferredModel() & k).to_dicts()[0]["output"] for k in keys]
    assert any(not torch.equal(tuned_state[k], source_state[k]) for k in core_keys), [
        (o["best_epoch"], o["val_correlation"], o["initial_val_correlation"], o["lr"]) for o in outputs
    ]
    assert all(k.startswith(("core.", "readout.90004-1-1.")) for k in frozen_state)
    model = TransferredModel.load_model(keys[0], include_dataloader=False)
    assert model.readout["90004-1-1"].outdims == 8

    q = quote_identifier(empty_db.conn)
    database = schemas.schema_name()
    rows = _sql(
        empty_db.conn,
        f"SELECT transfer_hash, source_table, source_model_hash, source_dataset_hash, source_seed, score, "
        f"test_correlation FROM {q(database)}.{q('transferred_models_view')} ORDER BY score",
    )
    assert len(rows) == 2
    assert {r["transfer_hash"] for r in rows} == {frozen["transfer_hash"], tuned["transfer_hash"]}
    assert {(r["source_table"], r["source_dataset_hash"], r["source_seed"]) for r in rows} == {
        ("TrainedModel", source["dataset_hash"], 1)
    }
    assert all(np.isfinite(r["score"]) and r["test_correlation"] is not None for r in rows)
    neurons = schemas.neurons({"transfer_hash": frozen["transfer_hash"]}, view="transferred_neurons_view")
    assert len(neurons) == 8 and neurons["mu_x"].notna().all()
    table = schemas.transferred_results()
    assert set(table["transfer.freeze_core"]) == {True, False}
    assert set(table["source_model_hash"]) == {source["model_hash"]}
    from sysid.results import results_table

    assert results_table(table) is not None  # what `sysid results --transferred` prints


def test_killed_worker_resumes_the_transfer_from_its_checkpoint(empty_db, worker_env, sessions, monkeypatch):
    import schemas
    from schemas import Transfer, TransferCheckpoint, TransferredModel, register_transfer

    # a short lease: the killed worker's heartbeat stops and its job expires within seconds
    monkeypatch.setenv("SYSID_LEASE_SECONDS", "2")
    worker_env["SYSID_LEASE_SECONDS"] = "2"

    source = _source(sessions)
    target = _target(sessions, trainer=LONG)
    key = register_transfer(source, **target, seed=3, recipe=Transfer.add_recipe({"freeze_core": True}))
    worker = _start(worker_env)
    assert _wait_for(lambda: len(TransferCheckpoint() & key) == 1), "no checkpoint appeared"
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=30)
    assert len(TransferredModel()) == 0
    cleared = []
    assert _wait_for(
        lambda: cleared.append(schemas.clear_orphaned_reservations()) or sum(cleared) == 1, timeout=20
    )
    epoch = (TransferCheckpoint() & key).to_dicts()[0]["epoch"]
    TransferredModel.populate(reserve_jobs=True, suppress_errors=True)
    output = (TransferredModel() & key).to_dicts()[0]["output"]
    assert 0 < epoch < 60 and output["resumed_from_epoch"] == epoch
    assert output["epochs"] == 60
    assert len(TransferCheckpoint() & key) == 0


def test_incompatible_source_is_refused_at_registration(empty_db, sessions):
    from pipeline.models.transfer import TransferError
    from schemas import Transfer, TransferSource, TransferTask, register_transfer

    source = _source(sessions)
    target = _target(sessions, model_config={**MODEL_CONFIG, "hidden_channels": 6})
    recipe = Transfer.add_recipe({"freeze_core": True})
    with pytest.raises(TransferError, match=r"cannot transfer TrainedModel .* core .*source \(8,"):
        register_transfer(source, **target, seed=3, recipe=recipe)
    assert len(TransferTask()) == 0 and len(TransferSource()) == 0
    with pytest.raises(ValueError, match="exactly one row of TrainedModel"):
        register_transfer({"seed": 99}, **target, seed=3, recipe=recipe)
    with pytest.raises(ValueError, match="core_lr"):
        Transfer.add_recipe({"freeze_core": True, "core_lr": 0.1})


def test_a_transferred_model_is_a_source_and_deleting_the_source_cascades(empty_db, sessions):
    import schemas
    from schemas import ChainedSource, Transfer, TransferredModel, TransferTask, register_transfer

    source = _source(sessions)
    target = _target(sessions)
    first = register_transfer(source, **target, seed=3, recipe=Transfer.add_recipe({"freeze_core": True}))
    TransferredModel.populate(first)
    tuned = Transfer.add_recipe({"freeze_core": False, "core_lr": 0.0005})
    second = register_transfer(first, **target, seed=4, recipe=tuned, table="TransferredModel")
    TransferredModel.populate(second)
    assert len(TransferredModel()) == 2 and len(ChainedSource()) == 1
    chained = TransferredModel.load_model(second, include_dataloader=False)
    assert chained(torch.zeros(2, 1, 18, 32), data_key="90004-1-1").shape == (2, 8)
    (schemas.TrainedModel() & source).delete(prompt=False)
    assert len(TransferredModel()) == 0 and len(TransferTask()) == 0


def test_registration_file_grids_transfers_over_target_sizes(empty_db, sessions):
    import schemas
    from sysid.register import RegistrationError, parse_plan, register_plan, validate_plan

    source = _source(sessions)
    doc = {
        "seeds": [2],
        "dataset": {
            "fn": "pipeline.data.static_loaders",
            "config": {"paths": [str(sessions[3])], "batch_size": 16, "grid": {"image_n": [30, 60]}},
        },
        "model": {"fn": MODEL_FN, "config": MODEL_CONFIG},
        "trainer": {"fn": TRAINER_FN, "config": TARGET},
        "transfer": {
            "sources": [{"model": source["model_hash"][:8], "dataset": source["dataset_hash"][:8]}],
            "recipe": [{"freeze_core": True}, {"freeze_core": False, "grid": {"core_lr": [0.0001, 0.001]}}],
        },
    }
    plan = parse_plan(doc)
    validate_plan(plan)
    keys = register_plan(plan, schemas)
    assert len(keys["transfer"]) == 2 * 3 and len(schemas.TransferTask()) == 6
    assert len(schemas.Transfer()) == 3
    with pytest.raises(RegistrationError, match="core_lr"):
        parse_plan({**doc, "transfer": {**doc["transfer"], "recipe": {"freeze_core": True, "core_lr": 0.1}}})
