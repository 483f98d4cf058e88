"""pipeline.builder: function resolution, canonical configs and hashes, validation, builders."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from pipeline import builder
from tests import toy_fns


def test_resolve_fn_finds_functions_and_sinzlab_aliases():
    assert builder.resolve_fn("tests.toy_fns.toy_model") is toy_fns.toy_model
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    assert (
        builder.resolve_fn("sensorium.models.stacked_core_full_gauss_readout")
        is stacked_core_full_gauss_readout
    )
    assert (
        builder.resolve_fn("sensorium.models.models.stacked_core_full_gauss_readout")
        is stacked_core_full_gauss_readout
    )
    assert builder.resolve_fn("sensorium.training.standard_trainer") is standard_trainer
    from pipeline.data import static_loaders

    assert builder.resolve_fn("sensorium.datasets.static_loaders") is static_loaders


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.no_such_module.fn", "cannot import"),
        ("tests.toy_fns.no_such_fn", "no function 'no_such_fn'"),
        ("nodots", "package.module.function"),
        ("tests.toy_fns.torch", "not a function"),
    ],
)
def test_resolve_fn_errors_name_the_problem(path, message):
    with pytest.raises((ValueError, TypeError), match=message):
        builder.resolve_fn(path)


def test_canonical_config_keeps_types_and_sorts_keys():
    assert builder.canonical_config({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    hashes = {builder.config_hash({"a": v}) for v in (8, "8", 8.0, True)}
    assert len(hashes) == 4
    assert builder.config_hash({"a": (1, 2)}) == builder.config_hash({"a": [1, 2]})
    assert builder.config_hash({"a": np.int64(3), "b": np.float32(0.5)}) == builder.config_hash(
        {"a": 3, "b": 0.5}
    )
    assert builder.config_hash({"a": np.arange(3)}) == builder.config_hash({"a": [0, 1, 2]})
    assert builder.config_hash({"x": 1, "y": 2}) == builder.config_hash({"y": 2, "x": 1})
    digest = builder.config_hash({"a": 1})
    assert len(digest) == 32 and digest == digest.lower() and int(digest, 16) >= 0


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"a": {1, 2}}, TypeError, "set"),
        ({"a": float("nan")}, ValueError, "NaN"),
        ({"a": float("inf")}, ValueError, "infinity"),
        ({1: "x"}, TypeError, "keys must be strings"),
        ({"a": object()}, TypeError, "not JSON-representable"),
        ({"a": {"b": [1, np.array(["x", None], dtype=object)]}}, TypeError, "a.b"),
        ([1, 2], TypeError, "must be a dict"),
    ],
)
def test_canonical_config_rejects_non_json(config, error, message):
    with pytest.raises(error, match=message):
        builder.canonical_config(config)


def test_validate_config_checks_keys_against_signature():
    assert (
        builder.validate_config("tests.toy_fns.toy_trainer", {"epochs": 2}, "trainer") is toy_fns.toy_trainer
    )
    with pytest.raises(ValueError, match=r"does not accept config key\(s\) \['epochz'\]"):
        builder.validate_config("tests.toy_fns.toy_trainer", {"epochz": 2}, "trainer")
    with pytest.raises(ValueError, match="supplies itself"):
        builder.validate_config("tests.toy_fns.toy_dataset", {"seed": 1}, "dataset")
    with pytest.raises(ValueError, match="role"):
        builder.validate_config("tests.toy_fns.toy_dataset", {}, "datasett")

    def needs_path(seed, path, **kwargs):
        return path

    with pytest.raises(ValueError, match=r"lacks required argument\(s\) \['path'\]"):
        builder.validate_config(needs_path, {}, "dataset")
    # **kwargs accepts any key
    assert builder.validate_config(needs_path, {"path": "x", "anything": 1}, "dataset") is needs_path


def test_get_data_model_trainer_and_all_parts():
    loaders = builder.get_data("tests.toy_fns.toy_dataset", {"seed": np.int64(3), "n_trials": 10})
    assert loaders["train"]["toy"][0].shape == (10, 5)
    model = builder.get_model("tests.toy_fns.toy_model", {}, dataloaders=loaders, seed=np.int64(1))
    assert isinstance(model, torch.nn.Linear)
    trainer = builder.get_trainer("tests.toy_fns.toy_trainer", {"epochs": 2})
    assert isinstance(trainer, functools.partial)
    score, output, state = trainer(model, loaders, 1)
    assert output["epochs"] == 2 and np.isfinite(score)
    # numpy state (as stored in the database) loads strictly into a fresh model
    numpy_state = {k: v.numpy() for k, v in state.items()}
    again = builder.get_model(
        toy_fns.toy_model, {}, data_info={"n_inputs": 5, "n_neurons": 3}, state_dict=numpy_state
    )
    assert torch.equal(again.weight, state["weight"])
    with pytest.raises(RuntimeError):
        builder.get_model(toy_fns.toy_model, {"bias": False}, dataloaders=loaders, state_dict=numpy_state)
    with pytest.raises(ValueError, match="dataloaders or data_info"):
        builder.get_model(toy_fns.toy_model, {})
    data, model, trainer = builder.get_all_parts(
        "tests.toy_fns.toy_dataset",
        {},
        "tests.toy_fns.toy_model",
        {},
        seed=2,
        trainer_fn="tests.toy_fns.toy_trainer",
    )
    assert set(data) == {"train", "validation"} and callable(trainer)
