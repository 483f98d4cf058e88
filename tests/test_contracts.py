"""The cross-cutting contracts (pipeline.contracts) and that every layer goes through them."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import pytest
import torch

from pipeline import measures
from pipeline.contracts import (
    SplitBatch,
    UnknownDataKeyError,
    batch_as_dict,
    finite_or_none,
    ordered_tiers,
    resolve_data_key,
    resolve_device,
    split_batch,
    tier_loaders,
    train_loaders,
)
from pipeline.models.builders import data_info_from_loaders, stacked_core_full_gauss_readout
from pipeline.models.encoders import FiringRateEncoder
from pipeline.models.modulators import MLPModulator
from pipeline.models.readouts import MultipleGaussian2d
from pipeline.models.shifters import MLPShifter, StaticAffine2dShifter

Batch = namedtuple("Batch", ["images", "responses", "behavior"])
TINY = dict(hidden_channels=4, input_kern=5, hidden_kern=3, layers=2)


def _images_and_responses(seed: int = 0, n: int = 4, neurons: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 16, 20, generator=generator)
    responses = torch.rand(n, neurons, generator=generator) + 0.1
    return images, responses


# ------------------------------------------------------------------------------------------ batches
def test_split_batch_reads_namedtuple_dict_and_tuple_batches():
    images, responses = _images_and_responses()
    behavior = torch.zeros(4, 3)
    named = split_batch(Batch(images, responses, behavior))
    assert isinstance(named, SplitBatch)
    assert named.inputs is images and named.targets is responses and named.extra == {"behavior": behavior}
    # dict batches are read by key, whatever the order of the keys
    keyed = split_batch({"behavior": behavior, "responses": responses, "images": images})
    assert keyed.inputs is images and keyed.targets is responses and list(keyed.extra) == ["behavior"]
    sensorium = split_batch({"targets": responses, "inputs": images})
    assert sensorium.inputs is images and sensorium.targets is responses
    plain = split_batch((images, responses, behavior))
    assert plain.inputs is images and plain.targets is responses and plain.extra == {}
    with pytest.raises(ValueError, match="input key"):
        split_batch({"x": images, "y": responses})
    with pytest.raises(ValueError, match="at least images and responses"):
        split_batch((images,))
    with pytest.raises(TypeError, match="namedtuple, dict or tuple"):
        split_batch(images)


def test_batch_as_dict_names_every_field():
    images, responses = _images_and_responses()
    assert list(batch_as_dict(Batch(images, responses, None))) == ["images", "responses", "behavior"]
    assert list(batch_as_dict((images, responses, responses))) == ["inputs", "targets", "field2"]
    with pytest.raises(TypeError):
        batch_as_dict("images")


# ------------------------------------------------------------------------------------------ loaders
def test_tier_loaders_picks_one_tier_and_rejects_what_it_cannot_pick():
    tier = {"a-1-1": [1], "b-2-2": [2]}
    full = {"train": tier, "validation": {"a-1-1": [3]}}
    assert tier_loaders(tier) is tier and tier_loaders(tier, "validation") is tier
    assert tier_loaders(full, "validation") == {"a-1-1": [3]}
    assert train_loaders(full) is tier
    with pytest.raises(ValueError, match="pass tier="):
        tier_loaders(full)
    with pytest.raises(ValueError, match="'test' is not among"):
        tier_loaders(full, "test")
    with pytest.raises(ValueError, match="no session"):
        tier_loaders({})
    with pytest.raises(TypeError):
        tier_loaders([tier])


def test_ordered_tiers_is_the_order_of_datasets_and_loaders():
    assert ordered_tiers(["test", "zeta", "train", "alpha", "final_test", "train", "validation"]) == [
        "train",
        "validation",
        "test",
        "final_test",
        "alpha",
        "zeta",
    ]


# ------------------------------------------------------------------------------------------ sessions
def test_resolve_data_key():
    assert resolve_data_key(["a"], None) == "a"
    assert resolve_data_key(["a", "b"], "b") == "b"
    with pytest.raises(ValueError, match="data_key is required"):
        resolve_data_key(["a", "b"], None)
    with pytest.raises(UnknownDataKeyError, match="unknown data_key 'c'; the shifter has sessions") as info:
        resolve_data_key(["a", "b"], "c", "shifter")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("unknown")  # no KeyError quotes around the message


def test_every_session_keyed_module_raises_the_one_unknown_data_key_error():
    keys = ["a-1-1", "b-2-2"]
    shape = (4, 6, 8)
    readout = MultipleGaussian2d(dict.fromkeys(keys, shape), dict.fromkeys(keys, 3), bias=True)
    x = torch.randn(2, *shape)
    modules = {
        "readout": lambda: readout(x, data_key="nope"),
        "readout regularizer": lambda: readout.regularizer("nope"),
        "readout parameters": lambda: readout.neuron_parameters("nope"),
        "MLP shifter": lambda: MLPShifter(keys).regularizer("nope"),
        "affine shifter": lambda: StaticAffine2dShifter(keys).regularizer("nope"),
        "modulator": lambda: MLPModulator(dict.fromkeys(keys, 3)).regularizer("nope"),
    }
    for name, call in modules.items():
        try:
            call()
        except UnknownDataKeyError as err:
            assert "unknown data_key 'nope'" in str(err), name
        else:
            pytest.fail(f"the {name} accepted an unknown data_key")
    core = torch.nn.Conv2d(1, 4, 3)
    core.regularizer = lambda: torch.zeros(())
    encoder = FiringRateEncoder(core, readout, shifter=MLPShifter(keys[:1]))
    images = torch.randn(2, 1, 8, 10)
    with pytest.raises(UnknownDataKeyError, match="the model has sessions"):
        encoder(images, data_key="nope")
    # the readout knows the session but the shifter does not: the same error, naming the shifter
    with pytest.raises(UnknownDataKeyError, match="the shifter has sessions"):
        encoder(images, data_key="b-2-2", pupil_center=torch.zeros(2, 2))


# ------------------------------------------------------------------------------------------ devices, numbers
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu")
    with pytest.raises(TypeError):
        resolve_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_finite_or_none():
    assert finite_or_none(np.float32(0.5)) == 0.5 and isinstance(finite_or_none(np.float32(0.5)), float)
    assert finite_or_none(torch.tensor(2.0)) == 2.0
    for value in (None, math.nan, math.inf, -math.inf, "x", [1.0]):
        assert finite_or_none(value) is None


# ------------------------------------------------------------------------------------------ one rule everywhere
class DictLoader:
    """Yields dict batches (with the given key names) of fixed images and responses."""

    def __init__(self, images_key: str, responses_key: str, seed: int = 0):
        self.images, self.responses = _images_and_responses(seed)
        self.keys = images_key, responses_key

    def __iter__(self):
        # responses first: a reader taking "the first two fields" would swap images and responses
        yield {self.keys[1]: self.responses, self.keys[0]: self.images}

    def __len__(self) -> int:
        return 1


def test_builders_read_dict_batches_by_key_and_fail_as_scoring_does():
    good = {"train": {"a-1-1": DictLoader("images", "responses")}}
    info = data_info_from_loaders(good)["a-1-1"]
    assert info["n_neurons"] == 3 and info["input_shape"] == [1, 16, 20]
    np.testing.assert_allclose(
        info["mean_activity"], good["train"]["a-1-1"].responses.mean(0).numpy(), rtol=1e-6
    )
    model = stacked_core_full_gauss_readout(good, seed=0, **TINY)
    correlations = measures.get_correlations(model, good["train"])
    assert correlations.shape == (3,)

    bad = {"train": {"a-1-1": DictLoader("stimulus", "spikes")}}
    with pytest.raises(ValueError) as scored:
        measures.get_correlations(model, bad["train"])
    with pytest.raises(ValueError) as built:
        stacked_core_full_gauss_readout(bad, seed=0, **TINY)
    assert "a dict batch needs an input key" in str(built.value)
    assert str(built.value) == str(scored.value)
