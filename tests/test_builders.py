"""Model builders: from loaders or from data_info alone, sensorium's arguments, clear errors."""

from __future__ import annotations

import inspect
import json
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.models.builders import (
    data_info_from_loaders,
    stacked_core_factorized_readout,
    stacked_core_full_gauss_readout,
)
from pipeline.models.encoders import FiringRateEncoder
from pipeline.models.shifters import MLPShifter, StaticAffine2dShifter

Batch = namedtuple("Batch", ["images", "responses", "pupil_center"])


class ListLoader:
    """A tiny stand-in for TensorLoader: a fixed list of namedtuple batches plus a ``.dataset``."""

    def __init__(self, batches: list, coordinates: np.ndarray | None):
        self.batches = batches
        self.batch_size = batches[0].images.shape[0]
        neurons = (
            SimpleNamespace() if coordinates is None else SimpleNamespace(cell_motor_coordinates=coordinates)
        )
        self.dataset = SimpleNamespace(neurons=neurons)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loaders(
    neurons: dict[str, int] | None = None, channels: int = 1, coordinates: bool = True, seed: int = 0
) -> dict[str, dict[str, ListLoader]]:
    """``{"train": {key: loader}, "validation": {...}}`` with 2 batches of 3 images of 20 x 24 per session."""
    neurons = neurons or {"11-1-1": 5, "22-2-2": 3}
    rng = np.random.default_rng(seed)
    tiers = {}
    for tier in ("train", "validation"):
        tiers[tier] = {}
        for key, n in neurons.items():
            batches = [
                Batch(
                    torch.from_numpy(rng.normal(size=(3, channels, 20, 24)).astype(np.float32)),
                    torch.from_numpy(rng.gamma(2.0, size=(3, n)).astype(np.float32)),
                    torch.from_numpy(rng.normal(size=(3, 2)).astype(np.float32)),
                )
                for _ in range(2)
            ]
            coords = rng.uniform(0, 300, size=(n, 3)) if coordinates else None
            tiers[tier][key] = ListLoader(batches, coords)
    return tiers


TINY = dict(hidden_channels=4, input_kern=5, hidden_kern=3, layers=2)
GRID = {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 6, "final_tanh": True}


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# ------------------------------------------------------------------------------ gaussian builder
@pytest.mark.parametrize("extra", [{}, {"grid_mean_predictor": GRID, "shifter": True}])
def test_loaders_and_data_info_build_the_same_model(extra: dict) -> None:
    loaders = make_loaders()
    from_loaders = stacked_core_full_gauss_readout(loaders, seed=3, **TINY, **extra)
    info = json.loads(json.dumps(data_info_from_loaders(loaders)))  # survives a JSON database column
    from_info = stacked_core_full_gauss_readout(data_info=info, seed=3, **TINY, **extra)
    _assert_same_model(from_loaders, from_info)
    from_loaders.eval()
    from_info.eval()
    batch = next(iter(loaders["validation"]["22-2-2"]))
    kwargs = {"pupil_center": batch.pupil_center} if extra.get("shifter") else {}
    with torch.no_grad():
        expected = from_loaders(batch.images, data_key="22-2-2", **kwargs)
        got = from_info(batch.images, data_key="22-2-2", **kwargs)
    assert expected.shape == (3, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_data_info_fields_and_zero_initial_bias() -> None:
    loaders = make_loaders()
    assert data_info_from_loaders(loaders)["11-1-1"]["mean_activity"] is None
    info = data_info_from_loaders(loaders, mean_activity=True)
    assert list(info) == ["11-1-1", "22-2-2"]
    entry = info["11-1-1"]
    assert entry["n_neurons"] == 5 and entry["input_shape"] == [1, 20, 24] and entry["input_channels"] == 1
    responses = torch.cat([b.responses for b in loaders["train"]["11-1-1"]])
    np.testing.assert_allclose(entry["mean_activity"], responses.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        entry["cortex_coordinates"], loaders["train"]["11-1-1"].dataset.neurons.cell_motor_coordinates
    )
    # sensorium's builder passes no mean activity: biases start at 0 (same seed, same model)
    model = stacked_core_full_gauss_readout(loaders, seed=0, **TINY)
    assert torch.equal(model.readout["11-1-1"].bias, torch.zeros(5))


def test_session_structure_channels_and_sensorium_readout_arguments() -> None:
    loaders = make_loaders(channels=3)
    model = stacked_core_full_gauss_readout(
        loaders["train"], seed=0, **TINY, gamma_readout=0.25, init_sigma=0.3, gauss_type="isotropic"
    )
    assert isinstance(model, FiringRateEncoder)
    assert model.core.input_channels == 3
    assert list(model.readout.keys()) == ["11-1-1", "22-2-2"]
    readout = model.readout["11-1-1"]
    assert readout.outdims == 5 and readout.gauss_type == "isotropic"
    assert readout.feature_reg_weight == 0.25
    # stack=None: both layers are read out; pad_input=False shrinks 20 x 24 by the 5 x 5 input conv
    assert tuple(readout.in_shape) == (8, 16, 20)
    assert model.shifter is None


def test_sota_like_config_uses_the_cortex_grid_predictor() -> None:
    model = stacked_core_full_gauss_readout(make_loaders(), seed=0, **TINY, grid_mean_predictor=GRID)
    readout = model.readout["22-2-2"]
    assert tuple(readout.source_grid.shape) == (3, 2)
    assert readout.source_grid.abs().max().item() == pytest.approx(1.0)
    assert [n for n in readout.state_dict() if n.startswith("mu_transform")] == [
        "mu_transform.0.weight",
        "mu_transform.0.bias",
        "mu_transform.2.weight",
        "mu_transform.2.bias",
    ]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    loaders = make_loaders()
    a = stacked_core_full_gauss_readout(loaders, seed=np.int64(5), **TINY)  # nnfabrik passes numpy ints
    b = stacked_core_full_gauss_readout(loaders, seed=5, **TINY)
    c = stacked_core_full_gauss_readout(loaders, seed=6, **TINY)
    _assert_same_model(a, b)
    w_a, w_c = a.core.features.layer0.conv.weight, c.core.features.layer0.conv.weight
    assert not torch.equal(w_a, w_c)


@pytest.mark.parametrize(
    ("shifter_type", "cls"), [("MLP", MLPShifter), ("StaticAffine", StaticAffine2dShifter)]
)
def test_shifter_true_builds_one_shifter_per_session(shifter_type: str, cls: type) -> None:
    model = stacked_core_full_gauss_readout(
        make_loaders(), seed=0, **TINY, shifter=True, shifter_type=shifter_type, gamma_shifter=0.5
    )
    assert isinstance(model.shifter, cls)
    assert list(model.shifter.keys()) == ["11-1-1", "22-2-2"]
    assert model.shifter.gamma_shifter == 0.5
    if cls is MLPShifter:  # sensorium defaults: 3 layers of 5 hidden units
        assert [tuple(p.shape) for p in model.shifter["11-1-1"].parameters()] == [
            (5, 2),
            (5,),
            (5, 5),
            (5,),
            (2, 5),
            (2,),
        ]
    with pytest.raises(ValueError, match="shifter_type"):
        stacked_core_full_gauss_readout(make_loaders(), seed=0, **TINY, shifter=True, shifter_type="Magic")


def test_share_features_across_sessions_uses_one_parameter() -> None:
    loaders = make_loaders({"a-1-1": 4, "b-1-1": 4})
    ids = {"a-1-1": np.array([0, 1, 2, 3]), "b-1-1": np.array([3, 2, 1, 0])}
    model = stacked_core_full_gauss_readout(
        loaders, seed=0, **TINY, share_features=True, shared_match_ids=ids
    )
    assert model.readout["b-1-1"].shared_features is model.readout["a-1-1"].shared_features
    with pytest.raises(ValueError, match="match ids"):
        stacked_core_full_gauss_readout(loaders, seed=0, **TINY, share_features=True)


def test_sensorium_argument_names_and_defaults() -> None:
    """Stored sensorium configs must keep working: same names, same defaults (COMPAT.md §3)."""
    expected = dict(
        hidden_channels=32,
        input_kern=13,
        hidden_kern=3,
        layers=3,
        gamma_input=15.5,
        skip=0,
        final_nonlinearity=True,
        momentum=0.9,
        pad_input=False,
        batch_norm=True,
        hidden_dilation=1,
        laplace_padding=None,
        input_regularizer="LaplaceL2norm",
        use_avg_reg=False,
        init_mu_range=0.2,
        init_sigma=1.0,
        readout_bias=True,
        gamma_readout=4,
        elu_offset=0,
        stack=None,
        depth_separable=False,
        linear=False,
        gauss_type="full",
        grid_mean_predictor=None,
        attention_conv=False,
        shifter=None,
        shifter_type="MLP",
        input_channels_shifter=2,
        hidden_channels_shifter=5,
        shift_layers=3,
        gamma_shifter=0,
        shifter_bias=True,
        hidden_padding=None,
        core_bias=True,
        share_features=False,
        share_grid=False,
        shared_match_ids=None,
    )
    params = inspect.signature(stacked_core_full_gauss_readout).parameters
    assert list(params)[:3] == ["dataloaders", "seed", "data_info"]
    got = {name: p.default for name, p in params.items() if name not in ("dataloaders", "seed", "data_info")}
    assert got == expected


# ------------------------------------------------------------------------------ errors
def test_unknown_config_key_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="hiden_channels"):
        stacked_core_full_gauss_readout(make_loaders(), seed=0, hiden_channels=4)
    with pytest.raises(TypeError, match="gamma_redout"):
        stacked_core_factorized_readout(make_loaders(), seed=0, gamma_redout=1.0)
    with pytest.raises(TypeError, match="hidden_size"):
        stacked_core_full_gauss_readout(
            make_loaders(), seed=0, grid_mean_predictor={**GRID, "hidden_size": 3}
        )


def test_missing_data_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="dataloaders .* data_info"):
        stacked_core_full_gauss_readout(seed=0)
    with pytest.raises(ValueError, match="dataloaders .* data_info"):
        stacked_core_factorized_readout()


def test_bad_data_info_and_inconsistent_sessions_are_rejected() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        stacked_core_full_gauss_readout(data_info={"a": {"n_neurons": 3}})
    with pytest.raises(ValueError, match="same number of input channels"):
        stacked_core_full_gauss_readout(
            data_info={
                "a": {"n_neurons": 3, "input_shape": [1, 20, 24]},
                "b": {"n_neurons": 3, "input_shape": [2, 20, 24]},
            }
        )
    with pytest.raises(ValueError, match="cortex coordinates"):
        stacked_core_full_gauss_readout(
            make_loaders(coordinates=False), seed=0, **TINY, grid_mean_predictor=GRID
        )
    with pytest.raises(ValueError, match="type must be 'cortex'"):
        stacked_core_full_gauss_readout(
            make_loaders(), seed=0, **TINY, grid_mean_predictor={**GRID, "type": "retina"}
        )


# ------------------------------------------------------------------------------ factorized builder
def test_factorized_builder_from_loaders_and_data_info() -> None:
    loaders = make_loaders()
    a = stacked_core_factorized_readout(loaders, seed=1, **TINY, gamma_readout=0.5, init_noise=0.01)
    b = stacked_core_factorized_readout(
        data_info=data_info_from_loaders(loaders), seed=1, **TINY, gamma_readout=0.5, init_noise=0.01
    )
    _assert_same_model(a, b)
    readout = a.readout["11-1-1"]
    assert tuple(readout.spatial.shape) == (5, 16, 20)
    assert tuple(readout.features.shape) == (5, 8)
    assert readout.spatial_and_feature_reg_weight == 0.5
    a.eval()
    x = next(iter(loaders["validation"]["11-1-1"])).images
    out = a(x, data_key="11-1-1")
    assert out.shape == (3, 5) and (out > 0).all()
    reg = a.regularizer(data_key="11-1-1")
    assert reg.dim() == 0 and reg > 0


@pytest.mark.parametrize(
    ("options", "channels"),
    [
        ({}, 1),
        ({"include_eye_position": True}, 1),  # the readout tutorial: the eye position feeds a shifter only
        ({"include_behavior": True, "include_eye_position": True}, 4),  # Sensorium+
        ({"include_behavior": True, "add_behavior_as_channels": False}, 1),
        ({"include_behavior": True, "include_eye_position": True, "add_eye_pos_as_channels": True}, 6),
        ({"include_eye_position": True, "add_eye_pos_as_channels": True}, 3),
    ],
    ids=str,
)
def test_input_channels_follow_sensoriums_channel_rule(tmp_path, options, channels) -> None:
    """Behaviour: +3 channels with include_behavior and add_behavior_as_channels; eye position: +2 only
    with add_eye_pos_as_channels — read by data_info_from_loaders and the builders from the loaders."""
    from pipeline.data import make_synthetic_dataset, static_loaders

    path = make_synthetic_dataset(
        tmp_path / "static77-1-1-x", n_neurons=4, n_train=8, n_validation=2, n_test_images=1, n_repeats=2,
        image_shape=(14, 16),
    )  # fmt: skip
    loaders = static_loaders([str(path)], batch_size=4, seed=0, **options)
    assert data_info_from_loaders(loaders)["77-1-1"]["input_channels"] == channels
    model = stacked_core_full_gauss_readout(
        loaders, seed=0, hidden_channels=4, input_kern=3, hidden_kern=3, layers=1
    )
    assert model.core.features.layer0.conv.in_channels == channels
