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
    # no transfers, ensembles or MEI methods here: their tables have nothing to do
    assert dict(status["done"]) == {
        "DataInfo": 1,
        "TrainedModel": 4,
        "NeuronScore": 4,
        "ReadoutParameters": 4,
        "TransferredModel": 0,
        "TransferredScore": 0,
        "TransferredReadoutParameters": 0,
        "EnsembleScore": 0,
        "MEI": 0,
    }
    assert status["remaining"].sum() == 0
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
        "model_fn, model_hash, seed, data_key, unit_id, neuron_index, cortex_x, readout_type, mu_x, mu_y, "
        "sigma_x, feature_norm, bias, validation_correlation, test_correlation, test_oracle",
    )
    assert len(rows) == 4 * N_NEURONS
    assert {r[7] for r in rows} == {"FullGaussian2d", "FullFactorized2d"}
    for row in rows:
        assert row[3] == "90001-1-1" and row[6] is not None
        assert -1.0 <= row[8] <= 1.0 and -1.0 <= row[9] <= 1.0  # receptive-field position in grid units
        assert row[13] is not None and row[14] is not None and row[15] is not None
    # each neuron's row holds its own readout: the view's feature norm is the norm of the stored vector
    import schemas

    features = {
        (u["model_fn"], u["model_hash"], u["seed"], u["data_key"], u["unit_id"]): u["features"]
        for u in schemas.ReadoutParameters.Unit().to_dicts()
    }
    for row in rows:
        assert row[11] == pytest.approx(float(np.linalg.norm(features[row[:5]])), rel=1e-5)
    # ... and the loaded model's readout parameters, neuron by neuron (unit id -> output index)
    key = {**populated["gauss"], "seed": 1, **populated["dataset"], **populated["trainer"]}
    truth = (
        schemas.TrainedModel.load_model(key, include_dataloader=False)
        .readout["90001-1-1"]
        .neuron_parameters()
    )
    mine = sorted((r for r in rows if r[:3] == (key["model_fn"], key["model_hash"], 1)), key=lambda r: r[5])
    assert [r[5] for r in mine] == list(range(N_NEURONS))
    np.testing.assert_allclose([r[8] for r in mine], truth["mu_x"], rtol=1e-6)
    np.testing.assert_allclose([r[11] for r in mine], truth["feature_norm"], rtol=1e-5)


def test_load_model_reproduces_the_stored_score(populated):
    from pipeline import measures
    from schemas import TrainedModel

    populated["db"].activate()
    key = {**populated["gauss"], "seed": 2}
    score = (TrainedModel() & key).to_dicts()[0]["score"]
    loaders, model = TrainedModel.load_model(key)  # nnfabrik's default: (dataloaders, model)
    again = measures.get_correlations(model, loaders, tier="validation", per_neuron=False)
    assert again == pytest.approx(score, abs=1e-5)
    # built from DataInfo alone (no data read), the same parameters
    alone = TrainedModel.load_model(key, include_dataloader=False)
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


def test_results_are_what_the_cli_shows_with_configs_as_columns(populated, tiny_dataset):
    import json

    import schemas
    from schemas.columns import SUMMARY_COLUMNS

    populated["db"].activate()
    frame = schemas.results(populated["trainer"])  # the grid of the fixture (other tests add models)
    assert len(frame) == 4 and not [c for c in frame.columns if str(c).endswith("_config")]
    assert set(frame["dataset.paths"]) == {json.dumps([str(tiny_dataset)])}  # a list: one cell, JSON text
    assert set(frame["dataset.batch_size"]) == {16} and set(frame["model.layers"]) == {1}
    assert set(SUMMARY_COLUMNS) <= set(frame.columns) and frame["fraction_oracle"].notna().all()
    # the CLI's table filters on these columns as they are
    from sysid.results import select_rows

    assert len(select_rows(frame, filter_expr="`model.hidden_channels` == 4 and seed == 2")) == 2


def test_reports_read_the_neurons_view(populated):
    import schemas
    from sysid.report_data import fetch_report_data, report_neurons

    populated["db"].activate()
    key = {**populated["dataset"], **populated["factorized"], **populated["trainer"], "seed": 2}
    rows = schemas.neurons(key)
    assert len(rows) == N_NEURONS and set(rows["model_hash"]) == {key["model_hash"]}
    neurons = report_neurons(rows)
    assert set(neurons["correlation_tier"]) == {"test"}
    np.testing.assert_allclose(neurons["correlation"], rows["test_correlation"].astype(float))
    units = {u["unit_id"]: u for u in (schemas.NeuronScore.Unit() & key & {"tier": "test"}).to_dicts()}
    readouts = {u["unit_id"]: u for u in (schemas.ReadoutParameters.Unit() & key).to_dicts()}
    for row in neurons.itertuples():
        assert row.correlation == pytest.approx(units[row.unit_id]["correlation"])
        assert row.oracle == pytest.approx(units[row.unit_id]["oracle"])
        assert row.mu_x == pytest.approx(readouts[row.unit_id]["mu_x"])
    data = fetch_report_data(schemas, key)
    assert data.key == key and data.neurons.equals(neurons)
    assert list(data.progress["epoch"]) == [1, 2]
    with pytest.raises(ValueError, match="no column"):
        schemas.neurons({"no_such_column": 1})


def test_the_real_trainers_records_fill_every_progress_column(db, tiny_dataset):
    """pipeline.training.standard_trainer -> schemas.progress.ProgressRecorder, on a real database."""
    import dataclasses

    from pipeline.data import static_loaders
    from pipeline.models import stacked_core_full_gauss_readout
    from pipeline.training import EpochRecord, standard_trainer
    from schemas import Checkpoint, Dataset, Model, Seed, Trainer, TrainingProgress, state_io
    from schemas.progress import RECORD_COLUMNS, ProgressRecorder

    db.activate()
    # the recorded fields are fields of the trainer's record, and they are the progress table's columns
    assert set(RECORD_COLUMNS) <= {f.name for f in dataclasses.fields(EpochRecord)}
    assert set(RECORD_COLUMNS) == set(TrainingProgress.heading.secondary_attributes) - {"host", "progress_ts"}
    key = {
        **Dataset.add_entry(
            "pipeline.data.static_loaders",
            {"paths": [str(tiny_dataset)], "batch_size": 16},
            skip_duplicates=True,
        ),
        **Model.add_entry(
            "pipeline.models.stacked_core_full_gauss_readout", SMALL_MODEL, skip_duplicates=True
        ),
        **Trainer.add_entry("pipeline.training.standard_trainer", TRAINER, skip_duplicates=True),
        "seed": 5,
    }
    Seed.insert1({"seed": 5}, skip_duplicates=True)
    recorder = ProgressRecorder(key, db.conn, every=1)
    records = []

    def callback(record):
        records.append(record)
        return recorder(record)

    loaders = static_loaders([str(tiny_dataset)], batch_size=16, seed=5)
    model = stacked_core_full_gauss_readout(loaders, seed=5, **SMALL_MODEL)
    try:
        standard_trainer(model, loaders, seed=5, cb=callback, **TRAINER)
        rows = (TrainingProgress() & key).to_dicts(order_by="epoch")
        assert [r["epoch"] for r in rows] == [r.epoch for r in records] == [1, 2]
        for row, record in zip(rows, records, strict=True):
            for name in RECORD_COLUMNS:
                value = getattr(record, name)
                assert (row[name] is None) == (value is None), name  # NULL only where the record has none
                if value is not None:
                    assert row[name] == pytest.approx(float(value)), name
        assert all(row["val_correlation"] is not None for row in rows)  # validated every epoch
        checkpoint = (Checkpoint() & key).to_dicts()[0]
        state = state_io.from_bytes(checkpoint["state"])
        assert checkpoint["epoch"] == 2 and checkpoint["nbytes"] == len(checkpoint["state"])
        assert int(state["epoch"]) == 2  # a resumable state of the last epoch
    finally:
        (TrainingProgress() & key).delete_quick()
        (Checkpoint() & key).delete_quick()
