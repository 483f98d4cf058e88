"""A second training table built from the shared machinery, as issue 10's TransferredModel will be.

Declared in a throwaway schema with the extension points of docs/INTERFACES.md ("Extension
points"): its own key (an extra ``Variant``), progress and checkpoint tables from the shared
definitions, ``StoredState`` from the shared part definition, and a ``job_spec`` hook. It trains,
records progress, stops on request and resumes from its own checkpoint, and loads back, without a
line of training code of its own.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from tests.fixtures_db import quiet_datajoint

TOY = "tests.toy_fns."


@pytest.fixture(scope="module")
def variant(db):
    quiet_datajoint()
    import datajoint as dj

    from schemas.configs import Dataset, Model, Seed, Trainer  # noqa: F401  (in the definitions)
    from schemas.data_info import DataInfo  # noqa: F401  (in the definitions)
    from schemas.neuron_scores import NEURON_SCORE_UNIT_DEFINITION, NeuronScoreTable, neuron_score_definition
    from schemas.progress import checkpoint_definition, progress_definition
    from schemas.trained_model import TrainedModel
    from schemas.training import STORED_STATE_DEFINITION, TrainingTable, trained_model_definition

    db.activate()
    schema = dj.Schema(f"test_{uuid.uuid4().hex[:8]}_variant", connection=db.conn)
    key_definition = """
    -> Model
    -> Dataset
    -> Trainer
    -> Seed
    -> Variant
    """

    @schema
    class Variant(dj.Lookup):
        definition = """
        variant: int32
        """
        contents = [(1,), (2,)]

    @schema
    class VariantProgress(dj.Manual):
        definition = progress_definition(key_definition)

    @schema
    class VariantCheckpoint(dj.Manual):
        definition = checkpoint_definition(key_definition)

    @schema
    class VariantModel(TrainingTable, dj.Computed):
        definition = trained_model_definition(
            "a toy second training table", key_definition, "variantmodel_ts"
        )
        progress_table = VariantProgress
        checkpoint_table = VariantCheckpoint
        timestamp_column = "variantmodel_ts"

        class StoredState(dj.Part):
            definition = STORED_STATE_DEFINITION

        def job_spec(self, key):
            # the TrainedModel job of the same configs, with a seed per variant
            job = TrainedModel().job_spec(key)
            return dataclasses.replace(job, seed=100 * job.seed + int(key["variant"]))

    @schema
    class VariantScore(NeuronScoreTable, dj.Computed):
        source = VariantModel
        definition = neuron_score_definition("VariantModel")

        class Unit(dj.Part):
            definition = NEURON_SCORE_UNIT_DEFINITION

    yield type(
        "Variant",
        (),
        {
            "model": VariantModel,
            "progress": VariantProgress,
            "checkpoint": VariantCheckpoint,
            "score": VariantScore,
        },
    )
    schema.drop(prompt=False)
    db.activate()


@pytest.fixture
def clean(db, variant):
    """Empty variant and pipeline tables (the variant tables first: they reference the configs)."""
    from tests.fixtures_db import _delete_everything

    def clear():
        variant.model().jobs.delete_quick()
        for table in (variant.model.StoredState, variant.model, variant.progress, variant.checkpoint):
            table().delete_quick()

    db.activate()
    clear()
    _delete_everything()
    yield
    clear()


def _register(trainer_fn, config):
    from schemas import Dataset, Model, Seed, Trainer

    Seed.insert1({"seed": 1}, skip_duplicates=True)
    return {
        **Dataset.add_entry(TOY + "toy_dataset", {"n_trials": 24}, skip_duplicates=True),
        **Model.add_entry(TOY + "toy_model", {}, skip_duplicates=True),
        **Trainer.add_entry(TOY + trainer_fn, config, skip_duplicates=True),
        "seed": 1,
    }


def test_a_second_training_table_trains_with_its_own_progress_and_loads_back(clean, variant):
    import torch

    from tests.toy_fns import _correlation, toy_dataset

    key = _register("toy_trainer", {"epochs": 3})
    result = variant.model.populate(key, reserve_jobs=True, suppress_errors=False)
    assert result["success_count"] == 2  # one model per variant
    rows = {r["variant"]: r for r in (variant.model() & key).to_dicts()}
    assert rows[1]["score"] != rows[2]["score"]  # the hook's seeds differ per variant
    assert rows[1]["host"] and rows[1]["package_versions"]["torch"] and rows[1]["device"] == "cpu"
    assert [p["epoch"] for p in (variant.progress() & key & {"variant": 1}).to_dicts(order_by="epoch")] == [
        1,
        2,
        3,
    ]
    assert len(variant.checkpoint() & key) == 0
    model = variant.model.load_model({**key, "variant": 2}, include_dataloader=False)
    x, y = toy_dataset(n_trials=24)["validation"]["toy"]
    with torch.no_grad():
        assert _correlation(model(x), y) == pytest.approx(rows[2]["score"], abs=1e-6)
    (variant.model() & key & {"variant": 1}).delete(prompt=False)
    assert len(variant.progress() & key & {"variant": 1}) == 0  # its progress rows went with it


def test_a_second_training_table_stops_on_request_and_resumes_from_its_checkpoint(clean, variant):
    import schemas

    key = {**_register("toy_stopping_trainer", {"epochs": 4, "stop_at_epoch": 2}), "variant": 1}
    try:
        result = variant.model.populate(key, reserve_jobs=True, suppress_errors=True)
        assert result["interrupted"] and len(variant.model() & key) == 0
    finally:
        schemas.clear_stop()
    assert (variant.checkpoint() & key).to_dicts()[0]["epoch"] == 2
    assert [j["status"] for j in (variant.model().jobs & key).to_dicts()] == ["pending"]  # re-queued
    variant.model.populate(key, reserve_jobs=True, suppress_errors=False)
    output = (variant.model() & key).to_dicts()[0]["output"]
    assert output["resumed_from_epoch"] == 2 and output["start_epoch"] == 2 and output["epochs"] == 4


def test_its_score_table_has_the_columns_of_neuron_score(variant):
    import schemas

    mine, theirs = variant.score(), schemas.NeuronScore()
    assert mine.heading.secondary_attributes == theirs.heading.secondary_attributes
    assert variant.score.Unit().heading.names == [
        *(n for n in mine.primary_key),
        *(n for n in schemas.NeuronScore.Unit().heading.names if n not in theirs.primary_key),
    ]
