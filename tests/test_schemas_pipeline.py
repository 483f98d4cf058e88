"""End to end with the real pipeline on a tiny synthetic dataset: populate, views, load_model."""

from __future__ import annotations

import numpy as np
import pytest

N_NEURONS = 8
SMALL_MODEL = {"hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 1}
TRAINER = {"max_iter": 2, "device": "cpu", "verbose": False, "progress": False}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from pipeline.data import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("tiny") / "static90001-1-1-tiny"
    return make_synthetic_dataset(
        folder,
        n_neurons=N_NEURONS,
        n_train=48,
        n_validation=16,
        n_test_images=4,
        n_repeats=3,
        image_shape=(16, 24),
    )


@pytest.fixture(scope="module")
def populated(db, tiny_dataset):
    """One dataset x two models (Gaussian, factorized) x one trainer x two seeds, populated."""
    import schemas
    from schemas import Dataset, Model, Seed, Trainer

    db.activate()
    dataset = Dataset.add_entry(
        "pipeline.data.static_loaders", {"paths": [str(tiny_dataset)], "batch_size": 16}
    )
    gauss = Model.add_entry("pipeline.models.stacked_core_full_gauss_readout", SMALL_MODEL)
    factorized = Model.add_entry("sensorium.models.stacked_core_factorized_readout", SMALL_MODEL)
    trainer = Trainer.add_entry("pipeline.training.standard_trainer", TRAINER)
    Seed.insert([{"seed": 1}, {"seed": 2}], skip_duplicates=True)
    result = schemas.populate_all()
    return {
        "db": db,
        "result": result,
        "dataset": dataset,
        "gauss": gauss,
        "factorized": factorized,
        "trainer": trainer,
    }


def _select(db, sql_from: str, columns: str):
    import schemas

    q = db.conn.adapter.quote_identifier
    return db.conn.query(f"SELECT {columns} FROM {q(schemas.schema_name())}.{q(sql_from)}").fetchall()


def test_populate_trains_four_models_and_fills_downstream_tables(populated):
    import schemas

    populated["db"].activate()
    assert all(not r["error_list"] for r in populated["result"].values()), schemas.errors()
    status = schemas.job_status()
    assert list(status["done"]) == [1, 4, 4, 4] and status["remaining"].sum() == 0
    trained = schemas.TrainedModel().to_dicts()
    assert len(trained) == 4 and all(np.isfinite(r["score"]) for r in trained)
    assert len(schemas.DataInfo.Neuron()) == N_NEURONS
    neurons = schemas.DataInfo.Neuron().to_dicts()
    assert all(n["cortex_x"] is not None for n in neurons) and {n["area"] for n in neurons} == {"V1"}
    # three tiers, the test tier with repeats: oracle filled there, NULL elsewhere
    units = schemas.NeuronScore.Unit().to_dicts()
    assert len(units) == 4 * N_NEURONS * 3
    assert all((u["oracle"] is not None) == (u["tier"] == "test") for u in units)


def test_views_give_scores_and_readout_parameters_in_plain_sql(populated):
    db = populated["db"]
    db.activate()
    models = _select(
        db, "trained_models_view", "model_fn, seed, score, validation_correlation, fraction_oracle"
    )
    assert len(models) == 4
    assert all(abs(score - val) < 1e-6 for _, _, score, val, _ in models)  # trainer score = validation corr
    rows = _select(
        db,
        "neurons_view",
        "model_fn, seed, data_key, unit_id, cortex_x, readout_type, mu_x, mu_y, sigma_x, feature_norm, "
        "bias, validation_correlation, test_correlation, test_oracle",
    )
    assert len(rows) == 4 * N_NEURONS
    assert {r[5] for r in rows} == {"FullGaussian2d", "FullFactorized2d"}
    for row in rows:
        assert row[2] == "90001-1-1" and row[4] is not None
        assert -1.0 <= row[6] <= 1.0 and -1.0 <= row[7] <= 1.0  # receptive-field position in grid units
        assert row[9] >= 0 and row[11] is not None and row[13] is not None


def test_load_model_reproduces_the_stored_score(populated):
    from pipeline import measures
    from schemas import TrainedModel

    populated["db"].activate()
    key = {**populated["gauss"], "seed": 2}
    score = (TrainedModel() & key).to_dicts()[0]["score"]
    loaders, model = TrainedModel.load_model(key, include_dataloaders=True)
    again = measures.get_correlations(model, loaders, tier="validation", per_neuron=False)
    assert again == pytest.approx(score, abs=1e-5)
    # built from DataInfo alone (no data read), the same parameters
    alone = TrainedModel.load_model(key)
    for (name, a), b in zip(model.state_dict().items(), alone.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), name
    with pytest.raises(ValueError, match="exactly one"):
        TrainedModel.load_model(populated["gauss"])


def test_results_flattens_configs(populated):
    import schemas

    populated["db"].activate()
    frame = schemas.results({"seed": 1})
    assert len(frame) == 2
    assert set(frame["model.hidden_channels"]) == {4} and set(frame["trainer.max_iter"]) == {2}
    assert frame["test_correlation"].notna().all()


def test_stopped_run_resumes_from_its_checkpoint_to_the_same_result(populated):
    import schemas
    from schemas import Checkpoint, TrainedModel, Trainer

    populated["db"].activate()
    config = {**TRAINER, "max_iter": 3}
    plain = Trainer.add_entry("pipeline.training.standard_trainer", config)
    stopping = Trainer.add_entry("tests.toy_fns.interrupting_trainer", {**config, "stop_at_epoch": 1})
    keys = [
        {**populated["dataset"], **populated["gauss"], **trainer, "seed": 1} for trainer in (plain, stopping)
    ]
    try:
        result = TrainedModel.populate(keys[1], reserve_jobs=True, suppress_errors=True)
        assert result["interrupted"] and len(TrainedModel() & keys[1]) == 0
        assert (Checkpoint() & keys[1]).to_dicts()[0]["epoch"] == 1
    finally:
        schemas.clear_stop()
    TrainedModel.populate(keys, reserve_jobs=True, suppress_errors=True)
    first, resumed = ((TrainedModel() & key).to_dicts()[0] for key in keys)
    assert resumed["output"]["resumed_from_epoch"] == 1 and len(Checkpoint() & keys[1]) == 0
    assert resumed["score"] == pytest.approx(first["score"], abs=1e-6)
