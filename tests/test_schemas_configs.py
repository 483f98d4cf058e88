"""Config tables: add_entry canonicalises, hashes, validates before inserting; duplicates as nnfabrik."""

from __future__ import annotations

import pytest


def test_same_config_twice_gives_one_row(empty_db):
    import schemas
    from schemas import Model

    key1 = Model.add_entry("tests.toy_fns.toy_model", {"bias": True})
    # nnfabrik's rule: a duplicate raises unless skip_duplicates=True, which warns and returns the key
    with pytest.raises(ValueError, match="already exists"):
        Model().add_entry("tests.toy_fns.toy_model", {"bias": True})
    with pytest.warns(schemas.DuplicateEntryWarning, match="Skipping"):
        key2 = Model().add_entry("tests.toy_fns.toy_model", {"bias": True}, skip_duplicates=True)
    assert key1 == key2 and len(Model()) == 1
    row = (Model() & key1).to_dicts()[0]
    assert row["model_config"] == {"bias": True}
    assert row["model_fabrikant"]  # the default fabrikant was created


def test_types_are_kept_in_the_hash(empty_db):
    from schemas import Dataset

    # typed validation checks values and never converts them: where both are valid they stay two configs
    k_int = Dataset.add_entry("tests.toy_fns.toy_labelled_dataset", {"label": 8})
    k_str = Dataset.add_entry("tests.toy_fns.toy_labelled_dataset", {"label": "8"})
    assert k_int != k_str and len(Dataset()) == 2
    configs = sorted(repr(r["dataset_config"]["label"]) for r in Dataset().to_dicts())
    assert configs == ["'8'", "8"]


@pytest.mark.parametrize(
    ("fn", "config", "message"),
    [
        ("tests.toy_fns.not_there", {}, "no function"),
        ("tests.nowhere.toy_trainer", {}, "cannot import"),
        ("tests.toy_fns.toy_trainer", {"epochz": 3}, "does not accept"),
        ("tests.toy_fns.toy_trainer", {"epochs": {3}}, "set"),
    ],
)
def test_bad_entries_fail_and_insert_nothing(empty_db, fn, config, message):
    from schemas import Fabrikant, Trainer

    with pytest.raises((ValueError, TypeError), match=message):
        Trainer.add_entry(fn, config)
    assert len(Trainer()) == 0 and len(Fabrikant()) == 0


def test_unknown_fabrikant_is_rejected(empty_db):
    from schemas import Trainer

    with pytest.raises(ValueError, match="unknown fabrikant"):
        Trainer.add_entry("tests.toy_fns.toy_trainer", {}, trainer_fabrikant="nobody")
    assert len(Trainer()) == 0


def test_json_config_is_readable_in_sql(empty_db):
    import schemas

    key = schemas.Trainer.add_entry("tests.toy_fns.toy_trainer", {"epochs": 7})
    conn, q = empty_db.conn, empty_db.conn.adapter.quote_identifier
    table = f"{q(schemas.schema_name())}.{q('trainer')}"
    if empty_db.backend == "postgres":
        sql = f"SELECT trainer_config->>'epochs' FROM {table} WHERE trainer_hash = %s"
    else:
        sql = f"SELECT JSON_VALUE(trainer_config, '$.epochs') FROM {table} WHERE trainer_hash = %s"
    assert str(conn.query(sql, args=(key["trainer_hash"],)).fetchall()[0][0]) == "7"


def test_experiments_restrict_populate(empty_db):
    from schemas import Dataset, Experiments, Model, Seed, TrainedModel, Trainer

    d = Dataset.add_entry("tests.toy_fns.toy_dataset", {"n_trials": 12})
    m = Model.add_entry("tests.toy_fns.toy_model", {})
    t1 = Trainer.add_entry("tests.toy_fns.toy_trainer", {"epochs": 1})
    Trainer.add_entry("tests.toy_fns.toy_trainer", {"epochs": 2})
    Seed.insert([{"seed": 5}, {"seed": 6}], skip_duplicates=True)
    Experiments.add_entry("one", [d], [m], [t1], [5])
    with pytest.raises(ValueError, match="no experiment"):
        Experiments.experiment_keys("two")
    TrainedModel.populate(Experiments.experiment_keys("one"), reserve_jobs=True, suppress_errors=True)
    rows = TrainedModel().to_dicts()
    assert [(r["trainer_hash"], r["seed"]) for r in rows] == [(t1["trainer_hash"], 5)]
