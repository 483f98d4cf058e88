"""Ensembles and MEIs in the database (both backends): creation by restriction, scores, MEIs, views,
concurrent workers, deletion, and method registration."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.fixtures_db import REPO_ROOT

N_NEURONS = 6
SMALL_MODEL = {"hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 1}
TRAINER = {"max_iter": 2, "device": "cpu", "verbose": False, "progress": False}
MEI_FN = "pipeline.mei.optimize_meis"
MEI_CONFIG = {"norm": 4.0, "max_steps": 12, "min_steps": 0, "patience": 5}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from pipeline.data import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("tiny-mei") / "static90001-1-1-tiny",
        n_neurons=N_NEURONS,
        n_train=40,
        n_validation=12,
        n_test_images=4,
        n_repeats=3,
        image_shape=(14, 20),
    )


@pytest.fixture(scope="module")
def trained(db, tiny_dataset):
    """One dataset x one model x one trainer x three seeds, trained with their scores and readouts."""
    import schemas
    from schemas import Dataset, Model, Seed, Trainer

    db.activate()
    dataset = Dataset.add_entry(
        "pipeline.data.static_loaders", {"paths": [str(tiny_dataset)], "batch_size": 16}
    )
    model = Model.add_entry("pipeline.models.stacked_core_full_gauss_readout", SMALL_MODEL)
    trainer = Trainer.add_entry("pipeline.training.standard_trainer", TRAINER)
    Seed.insert([{"seed": s} for s in (1, 2, 3)], skip_duplicates=True)
    result = schemas.populate_all()
    assert all(not r["error_list"] for r in result.values()), schemas.errors()
    return {
        "db": db,
        "dataset": dataset,
        "model": model,
        "trainer": trainer,
        "config": {**dataset, **model, **trainer},
    }


def _trained_keys(seeds):
    import schemas

    return [k for k in schemas.TrainedModel().keys(order_by="seed") if k["seed"] in seeds]


def test_the_ensemble_hash_does_not_depend_on_member_order(trained) -> None:
    import schemas
    from schemas.ensembles import ensemble_hash

    trained["db"].activate()
    keys = _trained_keys({1, 2, 3})
    assert len(keys) == 3
    forward = schemas.Ensemble.create(keys)
    backward = schemas.Ensemble.create(list(reversed(keys)))
    # every seed of one config, as a restriction: the same three members, the same ensemble
    by_config = schemas.Ensemble.create(trained["config"])
    assert forward == backward == by_config
    assert len(schemas.Ensemble & forward) == 1 and len(schemas.Ensemble.Member & forward) == 3
    assert (schemas.Ensemble & forward).fetch1("n_members") == 3
    assert ensemble_hash([("TrainedModel", k) for k in keys]) == forward["ensemble_hash"]
    assert (
        ensemble_hash([("TrainedModel", dict(reversed(list(k.items())))) for k in keys[::-1]])
        == forward["ensemble_hash"]
    )
    assert schemas.Ensemble.create(keys[:2]) != forward  # other members, another ensemble
    with pytest.raises(ValueError, match="twice"):
        ensemble_hash([("TrainedModel", keys[0]), ("TrainedModel", keys[0])])
    with pytest.raises(ValueError, match="matches no row of TrainedModel"):
        schemas.Ensemble.create({"seed": 99})
    with pytest.raises(ValueError, match="members come from"):
        schemas.Ensemble.create(keys, table=schemas.DataInfo)


def test_an_ensemble_is_scored_like_a_trained_model(trained) -> None:
    import schemas
    from pipeline.models import EnsembleEncoder
    from pipeline.scoring import score_model

    trained["db"].activate()
    key = schemas.Ensemble.create(_trained_keys({1, 2, 3}))
    schemas.EnsembleScore.populate(key)
    stored = (schemas.EnsembleScore.Unit & key & {"tier": "test"}).to_dicts(order_by="unit_id")
    assert len(stored) == N_NEURONS
    # the same numbers as scoring the ensemble module of the three loaded members directly
    members = [schemas.TrainedModel.load_model(k, include_dataloader=False) for k in _trained_keys({1, 2, 3})]
    dataloaders, _ = schemas.TrainedModel.load_model(_trained_keys({1})[0])
    (data_key,) = dataloaders["test"]
    direct = score_model(EnsembleEncoder(members), {"test": dataloaders["test"]})["test"][data_key][
        "correlation"
    ]
    np.testing.assert_allclose([u["correlation"] for u in stored], direct, rtol=1e-5, atol=1e-6)
    summary = (schemas.EnsembleScore & key).fetch1("test_correlation")
    assert summary == pytest.approx(float(np.mean(direct)), abs=1e-6)


def test_a_method_config_with_an_unknown_key_is_refused_at_registration(trained) -> None:
    import schemas
    from pipeline.mei import MEIConfigError

    trained["db"].activate()
    before = len(schemas.MEIMethod())
    with pytest.raises(MEIConfigError, match="nrom"):
        schemas.MEIMethod.add_entry(MEI_FN, {"nrom": 4.0})
    with pytest.raises(MEIConfigError, match="max_steps"):
        schemas.MEIMethod.add_entry(MEI_FN, {"max_steps": 0})
    with pytest.raises(ValueError, match="not an MEI method"):
        schemas.MEIMethod.add_entry("pipeline.training.standard_trainer", {})
    assert len(schemas.MEIMethod()) == before
    # the stored config is the complete settings: equal settings share one row
    a = schemas.MEIMethod.add_entry(MEI_FN, {})
    with pytest.warns(schemas.DuplicateEntryWarning):
        b = schemas.MEIMethod.add_entry(MEI_FN, {"norm": 10.0, "objective": "excite"}, skip_duplicates=True)
    assert a == b
    with pytest.raises(ValueError, match="already exists"):
        schemas.MEIMethod.add_entry(MEI_FN, {"norm": 10.0})
    _, stored = schemas.MEIMethod.get_config(a)
    assert stored["norm"] == 10.0 and stored["max_steps"] == 500


def test_workers_fill_one_mei_row_per_session_with_scalars_and_a_view(trained) -> None:
    import schemas
    from pipeline.mei import data_reference, optimize_meis

    trained["db"].activate()
    ensemble = schemas.Ensemble.create(_trained_keys({1, 2, 3}))
    method = schemas.MEIMethod.add_entry(MEI_FN, MEI_CONFIG, skip_duplicates=True)
    schemas.MEISeed.insert1({"mei_seed": 0}, skip_duplicates=True)
    result = schemas.populate_all()
    assert all(not r["error_list"] for r in result.values()), schemas.errors()
    key = {**ensemble, **method, "mei_seed": 0}
    master = (schemas.MEI & key).to_dicts()
    assert len(master) == 1 and master[0]["n_neurons"] == N_NEURONS and master[0]["seconds"] > 0
    units = (schemas.MEI.Unit & key).to_dicts(order_by="unit_id")
    assert len(units) == N_NEURONS
    # the images are what optimize_meis gives for the loaded ensemble (reproducible from the database)
    dataloaders, model = schemas.Ensemble.load_model(ensemble)
    data_key = master[0]["data_key"]
    reference = data_reference(dataloaders["train"][data_key])
    direct = optimize_meis(
        model, data_key, np.arange(N_NEURONS), reference.input_shape, MEI_CONFIG, seed=0,
        data_range=reference.pixel_range,
    )  # fmt: skip
    order = {u["unit_id"]: i for i, u in enumerate(units)}  # unit ids 1..N are in neuron order here
    for unit in units:
        i = order[unit["unit_id"]]
        assert unit["image"].shape == (1, 14, 20)
        np.testing.assert_allclose(unit["image"], direct.images[i].numpy(), atol=1e-5)
        assert unit["norm"] == pytest.approx(4.0, rel=2e-3)
        assert unit["activation"] == pytest.approx(float(direct.activations[i]), rel=1e-4)
        assert unit["relative_activation"] == pytest.approx(
            unit["activation"] / reference.mean_response[i], rel=1e-6
        )
        assert 1 <= unit["steps"] <= 12
    # the view: the MEI's scalars beside the ensemble's correlation and the members' mean position
    view = schemas.meis({**key}).sort_values("unit_id")
    assert len(view) == N_NEURONS
    scores = (schemas.EnsembleScore.Unit & ensemble & {"tier": "test"}).to_dicts(order_by="unit_id")
    np.testing.assert_allclose(
        view["test_correlation"].astype(float), [s["correlation"] for s in scores], atol=1e-9
    )
    np.testing.assert_allclose(view["activation"].astype(float), [u["activation"] for u in units])
    positions = [
        np.mean([r["mu_x"] for r in (schemas.ReadoutParameters.Unit & k & {"unit_id": uid}).to_dicts()])
        for uid in view["unit_id"]
        for k in [_trained_keys({1, 2, 3})]
    ]
    np.testing.assert_allclose(view["mu_x"].astype(float), positions, atol=1e-9)


WORKER = """
import json, os, sys, warnings
warnings.simplefilter("ignore")
import schemas
schemas.activate(os.environ["SYSID_SCHEMA_PREFIX"], backend=os.environ["SYSID_TEST_BACKEND"])
result = schemas.MEI.populate(reserve_jobs=True, suppress_errors=True)
print("RESULT", json.dumps({"success": result["success_count"], "errors": len(result["error_list"])}))
"""


@pytest.mark.slow
def test_two_workers_compute_meis_without_duplicates(trained, worker_env) -> None:
    import schemas

    trained["db"].activate()
    for seeds in ({1}, {2}, {3}, {1, 2}):
        schemas.Ensemble.create(_trained_keys(seeds))
    schemas.MEIMethod.add_entry(MEI_FN, MEI_CONFIG, skip_duplicates=True)
    schemas.MEISeed.insert([{"mei_seed": s} for s in (0, 1)], skip_duplicates=True)
    pending = len(schemas.MEI.key_source - schemas.MEI)
    assert pending >= 8
    env = {**worker_env, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=env,
            cwd=str(REPO_ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.split("RESULT", 1)[1]))
    assert sum(r["errors"] for r in results) == 0
    # every job computed exactly once between them, and every MEI row has all its neurons
    assert sum(r["success"] for r in results) == pending
    assert len(schemas.MEI.key_source - schemas.MEI) == 0
    counts = [len(schemas.MEI.Unit & k) for k in schemas.MEI().keys()]
    assert counts and all(c == N_NEURONS for c in counts)


def test_deleting_a_member_deletes_its_ensembles_with_their_scores_and_meis(trained) -> None:
    import datajoint as dj

    import schemas

    trained["db"].activate()
    pair = schemas.Ensemble.create(_trained_keys({1, 2}))
    alone = schemas.Ensemble.create(_trained_keys({3}))
    schemas.MEIMethod.add_entry(MEI_FN, MEI_CONFIG, skip_duplicates=True)
    schemas.MEISeed.insert1({"mei_seed": 0}, skip_duplicates=True)
    for table in (schemas.EnsembleScore, schemas.MEI):
        table.populate([pair, alone])
    assert len(schemas.MEI & pair) >= 1 and len(schemas.EnsembleScore & alone) == 1
    member = _trained_keys({1})[0]
    with_member = (schemas.Ensemble & (schemas.Ensemble.Member & member).proj()).keys()
    assert pair in with_member
    # refused when asked to keep parts whole without their masters
    with pytest.raises(dj.DataJointError):
        (schemas.TrainedModel & member).delete(prompt=False, part_integrity="enforce")
    assert len(schemas.TrainedModel & member) == 1 and len(schemas.Ensemble & pair) == 1
    # the default: the member's ensembles go, with everything computed from them
    (schemas.TrainedModel & member).delete(prompt=False)
    assert not schemas.TrainedModel & member
    for key in with_member:
        assert not schemas.Ensemble & key
        assert not schemas.Ensemble.Member & key
        assert not schemas.EnsembleScore & key and not schemas.MEI & key and not schemas.MEI.Unit & key
    assert len(schemas.Ensemble & alone) == 1 and len(schemas.MEI & alone) >= 1
    assert torch.isfinite(torch.as_tensor((schemas.EnsembleScore & alone).fetch1("test_correlation")))
