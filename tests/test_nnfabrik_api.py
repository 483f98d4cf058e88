"""nnfabrik's table API: a lab script written the nnfabrik way runs unchanged on our tables.

The script (fixture ``trained``) registers a fabrikant, a seed and one dataset, model and trainer
with nnfabrik's argument names (positionally and by keyword), populates ``TrainedModel`` on a tiny
synthetic dataset, and the tests use nnfabrik's methods on the result: ``load_model`` (its
default returns ``(dataloaders, model)``), ``build_model``, ``get_dataloader``, ``get_trainer``,
``fn_config``, ``resolve_fn``, ``add_entry``'s duplicate rules and return values.

The signatures are compared with nnfabrik's own: :data:`NNFABRIK_SIGNATURES` is hard-coded from
nnfabrik's source (github.com/sinzlab/nnfabrik at commit 29f22bc, ``nnfabrik/main.py`` and
``nnfabrik/templates/trained_model.py``); when nnfabrik's source is installed locally, the test
reads it and checks the hard-coded table against it too.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

N_NEURONS = 6
SEED = 3
DATASET_FN = "pipeline.data.static_loaders"
MODEL_FN = "pipeline.models.stacked_core_full_gauss_readout"
SMALL_MODEL = {"hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 1}
TRAINER = {"max_iter": 2, "device": "cpu", "verbose": False, "progress": False, "restore_best": False}

_EMPTY = inspect.Parameter.empty

#: nnfabrik's signatures (names and defaults, ``self``/``cls`` left out), read from its source
NNFABRIK_SIGNATURES: dict[tuple[str, str], list[tuple[str, object]]] = {
    ("Fabrikant", "add_entry"): [
        ("name", _EMPTY),
        ("email", _EMPTY),
        ("affiliation", _EMPTY),
        ("full_name", ""),
        ("dj_username", None),
        ("skip_duplicates", False),
        ("return_pk_only", True),
    ],
    ("Fabrikant", "get_current_user"): [],
    **{
        (table, "add_entry"): [
            (f"{role}_fn", _EMPTY),
            (f"{role}_config", _EMPTY),
            (f"{role}_comment", ""),
            (f"{role}_fabrikant", None),
            ("skip_duplicates", False),
            ("return_pk_only", True),
        ]
        for table, role in (("Dataset", "dataset"), ("Model", "model"), ("Trainer", "trainer"))
    },
    **{(table, "resolve_fn"): [("fn_name", _EMPTY)] for table in ("Dataset", "Model", "Trainer")},
    ("Model", "build_model"): [("dataloaders", None), ("seed", None), ("key", None), ("data_info", None)],
    ("Dataset", "get_dataloader"): [("seed", None), ("key", None)],
    ("Trainer", "get_trainer"): [("key", None), ("build_partial", True)],
    ("TrainedModel", "get_full_config"): [
        ("key", None),
        ("include_state_dict", True),
        ("include_trainer", True),
    ],
    ("TrainedModel", "load_model"): [
        ("key", None),
        ("include_dataloader", True),
        ("include_trainer", False),
        ("include_state_dict", True),
        ("seed", None),
    ],
}
#: where nnfabrik defines the classes (its TrainedModel methods are on TrainedModelBase)
_NNFABRIK_SOURCES = {"main.py": {}, "templates/trained_model.py": {"TrainedModelBase": "TrainedModel"}}


def _source_signatures(text: str, rename: dict[str, str]) -> dict[tuple[str, str], list[tuple[str, object]]]:
    """``{(class, method): [(argument, default), ...]}`` of every method in nnfabrik source ``text``."""
    found = {}
    for node in ast.parse(text).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, ast.FunctionDef):
                continue
            args = item.args.args
            is_static = any(getattr(d, "id", None) == "staticmethod" for d in item.decorator_list)
            names = [a.arg for a in (args if is_static else args[1:])]
            defaults = [ast.literal_eval(d) for d in item.args.defaults]
            defaults = [_EMPTY] * (len(names) - len(defaults)) + defaults
            found[(rename.get(node.name, node.name), item.name)] = list(zip(names, defaults, strict=True))
    return found


def _installed_nnfabrik_signatures() -> dict | None:
    """nnfabrik's signatures read from its installed source, or None when it is not installed."""
    try:
        spec = importlib.util.find_spec("nnfabrik")
    except ValueError:  # a stub module without a spec (tests/sensorium_peer.py installs one)
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    found = {}
    for relative, rename in _NNFABRIK_SOURCES.items():
        found.update(_source_signatures((root / relative).read_text(), rename))
    return found


def _parameters(function) -> tuple[list[tuple[str, object]], list[str]]:
    """nnfabrik-comparable parameters of a bound method, and the names of our keyword-only extras."""
    params = list(inspect.signature(function).parameters.values())
    positional = [(p.name, p.default) for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    extras = [p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params if p.name in extras)
    return positional, extras


def test_signatures_are_nnfabriks():
    import schemas

    installed = _installed_nnfabrik_signatures()
    if installed is not None:  # the hard-coded table is nnfabrik's
        for name, expected in NNFABRIK_SIGNATURES.items():
            assert installed[name] == expected, name
    allowed_extras = {"device", "include_dataloaders", "fabrikant", "comment"}
    for (table, method), expected in NNFABRIK_SIGNATURES.items():
        positional, extras = _parameters(getattr(getattr(schemas, table)(), method))
        assert positional == expected, (table, method)
        assert set(extras) <= allowed_extras, (table, method, extras)
    # the ensemble loads like a trained model, so score and MEI tables call both alike
    positional, _ = _parameters(schemas.Ensemble().load_model)
    assert positional == [("key", None), ("include_dataloader", True)]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from pipeline.data import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("tiny") / "static90001-1-1-tiny"
    return make_synthetic_dataset(
        folder,
        n_neurons=N_NEURONS,
        n_train=32,
        n_validation=16,
        n_test_images=4,
        n_repeats=2,
        image_shape=(12, 16),
    )


@pytest.fixture(scope="module")
def trained(db, tiny_dataset):
    """The nnfabrik way: Fabrikant, Seed, three add_entry calls (nnfabrik's names), populate."""
    import schemas
    from pipeline.training import standard_trainer
    from schemas import Dataset, Fabrikant, Model, Seed, TrainedModel, Trainer

    db.activate()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SYSID_FABRIKANT", raising=False)  # the default is then the database user's entry
        fabrikant = Fabrikant().add_entry("ada", "ada@lab.example", "Sinz Lab", full_name="Ada Lovelace")
        Seed().insert1({"seed": SEED})
        dataset_config = {"paths": [str(tiny_dataset)], "batch_size": 8}
        # positional, as nnfabrik's order: fn, config, comment, fabrikant
        dataset = Dataset().add_entry(DATASET_FN, dataset_config, "tiny synthetic", "ada")
        model = Model().add_entry(
            model_fn=MODEL_FN, model_config=SMALL_MODEL, model_comment="small", model_fabrikant="ada"
        )
        # a callable is stored by its dotted path; no fabrikant: the database user's (ada)
        trainer = Trainer().add_entry(standard_trainer, TRAINER, trainer_comment="two epochs")
    schemas.DataInfo().populate()
    result = TrainedModel().populate()
    assert result["success_count"] == 1, schemas.errors()
    key = {**dataset, **model, **trainer, "seed": SEED}
    return {
        "db": db,
        "fabrikant": fabrikant,
        "dataset": dataset,
        "model": model,
        "trainer": trainer,
        "dataset_config": dataset_config,
        "key": key,
    }


def _predict(model, loaders, tier="validation"):
    with torch.no_grad():
        return {
            k: torch.cat([model(batch[0], data_key=k) for batch in loader]).numpy()
            for k, loader in loaders[tier].items()
        }


def test_add_entry_keys_rows_defaults_and_duplicates(trained):
    import schemas
    from schemas import Dataset, Fabrikant, Model, Trainer

    trained["db"].activate()
    assert trained["fabrikant"] == {"fabrikant_name": "ada"}
    assert Fabrikant.get_current_user() == "ada"  # dj_username defaulted to the connection's user
    ada = (Fabrikant() & trained["fabrikant"]).to_dicts()[0]
    assert ada["full_name"] == "Ada Lovelace" and ada["affiliation"] == "Sinz Lab"
    # return_pk_only=True (default): exactly the primary key
    assert set(trained["model"]) == {"model_fn", "model_hash"}
    assert set(trained["dataset"]) == {"dataset_fn", "dataset_hash"}
    assert trained["trainer"]["trainer_fn"] == "pipeline.training.trainer.standard_trainer"  # fn.__module__
    rows = {
        name: (table() & trained[name]).to_dicts()[0]
        for name, table in (("dataset", Dataset), ("model", Model), ("trainer", Trainer))
    }
    assert (
        rows["dataset"]["dataset_comment"] == "tiny synthetic"
        and rows["dataset"]["dataset_fabrikant"] == "ada"
    )
    assert rows["model"]["model_comment"] == "small" and rows["model"]["model_fabrikant"] == "ada"
    assert rows["trainer"]["trainer_fabrikant"] == "ada"  # nnfabrik's default: the database user's entry
    # an existing entry raises (nnfabrik's default skip_duplicates=False) and inserts nothing
    before = len(Model())
    with pytest.raises(ValueError, match="already exists"):
        Model().add_entry(MODEL_FN, dict(reversed(list(SMALL_MODEL.items()))))  # same config, other order
    assert len(Model()) == before
    # skip_duplicates=True warns and returns the existing entry; return_pk_only=False: the whole row
    with pytest.warns(schemas.DuplicateEntryWarning, match="Skipping"):
        row = Model().add_entry(
            MODEL_FN, SMALL_MODEL, "other comment", skip_duplicates=True, return_pk_only=False
        )
    assert row["model_comment"] == "small" and row["model_config"] == SMALL_MODEL
    assert {k: row[k] for k in trained["model"]} == trained["model"] and "model_ts" in row
    new = Model().add_entry(MODEL_FN, {**SMALL_MODEL, "layers": 2}, return_pk_only=False)
    assert (
        new["model_config"]["layers"] == 2 and new["model_fabrikant"] == "ada" and len(Model()) == before + 1
    )
    # Fabrikant: the same name, or another name for the same database user, is a duplicate
    with pytest.raises(ValueError, match="already exists"):
        Fabrikant().add_entry("ada", "x@y", "Lab")
    with pytest.raises(ValueError, match="already exists"):
        Fabrikant().add_entry("ada2", "x@y", "Lab")
    with pytest.warns(schemas.DuplicateEntryWarning):
        assert Fabrikant().add_entry("ada2", "x@y", "Lab", skip_duplicates=True) == {"fabrikant_name": "ada"}
    other = Fabrikant().add_entry("bob", "bob@lab", "Lab", dj_username="bob", return_pk_only=False)
    assert other["dj_username"] == "bob" and other["full_name"] == ""
    with pytest.raises(ValueError, match="unknown fabrikant"):
        Trainer().add_entry("pipeline.training.standard_trainer", {"max_iter": 1}, trainer_fabrikant="nobody")
    # the old short names still work, with a deprecation warning
    with pytest.warns(DeprecationWarning) as record:
        old = Model.add_entry(MODEL_FN, {**SMALL_MODEL, "layers": 3}, fabrikant="bob", comment="old")
    assert {str(w.message).split("=")[0] for w in record} == {"fabrikant", "comment"}
    assert (Model() & old).to_dicts()[0]["model_fabrikant"] == "bob"


def test_load_model_returns_dataloaders_and_model_like_nnfabrik(trained):
    from pipeline import measures
    from schemas import TrainedModel

    trained["db"].activate()
    key = trained["key"]
    dataloaders, model = TrainedModel().load_model(key)  # nnfabrik's default shape
    assert set(dataloaders) >= {"train", "validation", "test"} and "90001-1-1" in dataloaders["train"]
    assert isinstance(model, torch.nn.Module) and not model.training
    score = (TrainedModel() & key).to_dicts()[0]["score"]
    assert measures.get_correlations(
        model, dataloaders, tier="validation", per_neuron=False
    ) == pytest.approx(score, abs=1e-5)
    # the parameters are the stored state dict
    stored = TrainedModel.fetch_state(key)
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored[name]), name
    # include_trainer: a third element, the trainer with its config bound
    parts = (TrainedModel() & key).load_model()
    assert len(parts) == 2
    loaders3, model3, trainer = TrainedModel().load_model(key, include_trainer=True)
    assert isinstance(trainer, functools.partial) and trainer.keywords == TRAINER
    np.testing.assert_array_equal(
        _predict(model3, loaders3)["90001-1-1"], _predict(model, dataloaders)["90001-1-1"]
    )
    # without the loaders: the model alone (built from DataInfo), or (model, trainer)
    alone = TrainedModel().load_model(key, include_dataloader=False)
    assert isinstance(alone, torch.nn.Module)
    np.testing.assert_array_equal(
        _predict(alone, dataloaders)["90001-1-1"], _predict(model, dataloaders)["90001-1-1"]
    )
    model_only, trainer_only = TrainedModel().load_model(key, include_dataloader=False, include_trainer=True)
    assert isinstance(model_only, torch.nn.Module) and callable(trainer_only)
    # include_state_dict=False: freshly initialised with the seed (the trained one's, or the one given)
    from schemas import Model

    fresh = TrainedModel().load_model(key, include_dataloader=False, include_state_dict=False)
    built = Model().build_model(dataloaders, seed=SEED, key=key)
    reseeded = TrainedModel().load_model(
        key, include_dataloader=False, include_state_dict=False, seed=SEED + 1
    )
    other = Model().build_model(dataloaders, seed=SEED + 1, key=key)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, built.state_dict()[name]), name
        assert torch.equal(reseeded.state_dict()[name], other.state_dict()[name]), name
    assert any(not torch.equal(v, stored[n]) for n, v in fresh.state_dict().items())
    assert any(not torch.equal(v, other.state_dict()[n]) for n, v in fresh.state_dict().items())
    # get_full_config feeds get_all_parts, nnfabrik's way of rebuilding everything
    from pipeline.builder import get_all_parts

    config = TrainedModel().get_full_config(key)
    assert (
        config["trainer_fn"] == "pipeline.training.trainer.standard_trainer"
        and config["model_config"] == SMALL_MODEL
    )
    loaders4, model4, _ = get_all_parts(**config, seed=SEED)
    np.testing.assert_array_equal(
        _predict(model4.eval(), loaders4)["90001-1-1"], _predict(model, dataloaders)["90001-1-1"]
    )
    assert set(TrainedModel().get_full_config(key, include_state_dict=False, include_trainer=False)) == {
        "dataset_fn",
        "dataset_config",
        "model_fn",
        "model_config",
    }
    # the old argument name still works, with a deprecation warning
    with pytest.warns(DeprecationWarning, match="include_dataloader"):
        assert isinstance(TrainedModel.load_model(key, include_dataloaders=False), torch.nn.Module)
    with pytest.raises(ValueError, match="exactly one"):
        TrainedModel().load_model({"seed": SEED + 100})


def test_dataset_model_and_trainer_rebuild_and_retrain_the_stored_model(trained):
    from pipeline.data import static_loaders
    from pipeline.training import standard_trainer
    from schemas import Dataset, Model, TrainedModel, Trainer
    from schemas.data_info import stored_data_info

    trained["db"].activate()
    key = trained["key"]
    # get_dataloader: the dataset function with the stored config, the seed passed through
    dataloaders = Dataset().get_dataloader(seed=SEED, key=key)
    direct = static_loaders(**trained["dataset_config"], seed=SEED)
    assert dataloaders["train"]["90001-1-1"].seed == direct["train"]["90001-1-1"].seed
    assert (Dataset() & key).get_dataloader(seed=SEED + 1)["train"]["90001-1-1"].seed == (
        static_loaders(**trained["dataset_config"], seed=SEED + 1)["train"]["90001-1-1"].seed
    )
    # build_model needs loaders or data_info (nnfabrik's rule); both give the same model for one seed
    with pytest.raises(ValueError, match="dataloaders or data_info"):
        Model().build_model(seed=SEED, key=key)
    model = Model().build_model(dataloaders, seed=SEED, key=key)
    from_info = (Model() & trained["model"]).build_model(data_info=stored_data_info(key), seed=SEED)
    assert model.state_dict().keys() == from_info.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, from_info.state_dict()[name]), name
    # get_trainer: a partial that trains; with the same seed it reproduces the stored training
    trainer = Trainer().get_trainer(key=key)
    assert trainer.func is standard_trainer and trainer.keywords == TRAINER
    score, output, state_dict = trainer(model, dataloaders, seed=SEED)
    stored_score = (TrainedModel() & key).to_dicts()[0]["score"]
    assert np.isfinite(score) and score == pytest.approx(stored_score, abs=1e-5)
    stored = TrainedModel.fetch_state(key)
    assert state_dict.keys() == stored.keys()
    for name, value in state_dict.items():
        assert torch.allclose(value.cpu(), stored[name], atol=1e-5), name
    fn, config = (Trainer() & key).get_trainer(build_partial=False)
    assert fn is standard_trainer and config == TRAINER


def test_fn_config_and_resolve_fn(trained):
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from schemas import Dataset, Model, Trainer

    trained["db"].activate()
    assert (Model() & trained["model"]).fn_config == (MODEL_FN, SMALL_MODEL)
    assert (Dataset() & trained["dataset"]).fn_config == (DATASET_FN, trained["dataset_config"])
    fn, config = (Trainer() & trained["trainer"]).fn_config
    assert fn == "pipeline.training.trainer.standard_trainer" and config == TRAINER
    Model().add_entry(MODEL_FN, {**SMALL_MODEL, "hidden_channels": 5}, skip_duplicates=True)
    with pytest.raises(ValueError, match="exactly one row"):
        _ = Model().fn_config
    (Model() & trained["model"]).fn_config[1]["layers"] = (
        99  # a plain dict: changing it changes nothing stored
    )
    assert (Model() & trained["model"]).fn_config[1] == SMALL_MODEL
    # resolve_fn: on the class and on instances, Sinz-lab paths included
    assert Model.resolve_fn(MODEL_FN) is stacked_core_full_gauss_readout
    assert (
        Model().resolve_fn("sensorium.models.stacked_core_full_gauss_readout")
        is stacked_core_full_gauss_readout
    )
    with pytest.raises(ValueError, match="not_there"):
        Trainer.resolve_fn("pipeline.training.not_there")
