"""The Sensorium 2022 SOTA model has exactly the state-dict layout of Sinz-lab checkpoints.

A checkpoint trained with sensorium / neuralpredictors 0.3.0 must load into our model with
``strict=True`` and give the same predictions (docs: COMPAT.md §2).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG, stacked_core_full_gauss_readout
from tests.peer import peer_sota_model

DATA_KEY = "26872-17-20"
N_NEURONS = 7776

# The Sensorium 2022 notebooks' model configuration, plus core_bias=False as in their checkpoints.
SOTA_CONFIG = SENSORIUM_SOTA_MODEL_CONFIG


def _norm(prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.norm.weight", (64,)),
        (f"{prefix}.norm.bias", (64,)),
        (f"{prefix}.norm.running_mean", (64,)),
        (f"{prefix}.norm.running_var", (64,)),
        (f"{prefix}.norm.num_batches_tracked", ()),
    ]


def _hidden_layer(i: int) -> list[tuple[str, tuple[int, ...]]]:
    prefix = f"core.features.layer{i}"
    return [
        (f"{prefix}.ds_conv.in_depth_conv.weight", (64, 64, 1, 1)),
        (f"{prefix}.ds_conv.spatial_conv.weight", (64, 1, 7, 7)),
        (f"{prefix}.ds_conv.out_depth_conv.weight", (64, 64, 1, 1)),
        *_norm(prefix),
    ]


EXPECTED_STATE_DICT = [
    ("core._input_weights_regularizer.laplace.filter", (1, 1, 3, 3)),
    ("core.features.layer0.conv.weight", (64, 1, 9, 9)),
    *_norm("core.features.layer0"),
    *_hidden_layer(1),
    *_hidden_layer(2),
    *_hidden_layer(3),
    ("readout.26872-17-20.sigma", (1, 7776, 2, 2)),
    ("readout.26872-17-20._features", (1, 64, 1, 7776)),
    ("readout.26872-17-20.bias", (7776,)),
    ("readout.26872-17-20.source_grid", (7776, 2)),
    ("readout.26872-17-20.mu_transform.0.weight", (30, 2)),
    ("readout.26872-17-20.mu_transform.0.bias", (30,)),
    ("readout.26872-17-20.mu_transform.2.weight", (2, 30)),
    ("readout.26872-17-20.mu_transform.2.bias", (2,)),
]


def sota_data_info(n_neurons: int = N_NEURONS, seed: int = 0) -> tuple[dict, np.ndarray]:
    """data_info of one 1 x 36 x 64 session with random cortex coordinates (in µm)."""
    coordinates = np.random.default_rng(seed).uniform(-300, 500, size=(n_neurons, 3))
    info = {
        DATA_KEY: {
            "n_neurons": n_neurons,
            "input_shape": [1, 36, 64],
            "input_channels": 1,
            "cortex_coordinates": coordinates.tolist(),
            "mean_activity": None,
        }
    }
    return info, coordinates


@pytest.fixture(scope="module")
def sota_model() -> torch.nn.Module:
    info, _ = sota_data_info()
    return stacked_core_full_gauss_readout(data_info=info, seed=42, **SOTA_CONFIG)


def test_sota_state_dict_has_exactly_the_sinz_lab_layout(sota_model: torch.nn.Module) -> None:
    got = {name: tuple(t.shape) for name, t in sota_model.state_dict().items()}
    expected = dict(EXPECTED_STATE_DICT)
    assert sorted(set(got) - set(expected)) == []  # nothing extra
    assert sorted(set(expected) - set(got)) == []  # nothing missing
    assert got == expected  # and every shape matches


def test_sota_buffers_hold_the_laplace_kernel_and_the_normalised_cortex_grid(
    sota_model: torch.nn.Module,
) -> None:
    state = sota_model.state_dict()
    laplace = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
    assert torch.equal(state["core._input_weights_regularizer.laplace.filter"][0, 0], laplace)
    _, coordinates = sota_data_info()
    xy = coordinates[:, :2] - coordinates[:, :2].mean(0)
    xy = xy / np.abs(xy).max()
    grid = state[f"readout.{DATA_KEY}.source_grid"].numpy()
    np.testing.assert_allclose(grid, xy, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the peer warns about gamma_readout and a zero bias
def test_sota_model_loads_a_peer_checkpoint_strictly_and_predicts_the_same(
    sota_model: torch.nn.Module,
) -> None:
    try:
        peer = peer_sota_model(DATA_KEY, N_NEURONS, sota_data_info()[1])
    except ImportError:
        pytest.skip("neuralpredictors 0.3.0 is not installed")
    # make the checkpoint differ from our fresh weights, as a trained one would
    with torch.no_grad():
        for tensor in peer.state_dict().values():
            if tensor.is_floating_point() and tensor.dim() > 1 and tensor.shape != (1, 1, 3, 3):
                tensor.add_(0.01 * torch.randn_like(tensor))
    # round trip through torch.save / torch.load(weights_only=True), as a checkpoint file would go
    stream = io.BytesIO()
    torch.save(peer.state_dict(), stream)
    stream.seek(0)
    checkpoint = torch.load(stream, weights_only=True, map_location="cpu")
    sota_model.load_state_dict(checkpoint, strict=True)
    for name, tensor in peer.state_dict().items():
        assert torch.equal(sota_model.state_dict()[name], tensor), name
    peer.eval()
    sota_model.eval()
    x = torch.randn(2, 1, 36, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peer(x, data_key=DATA_KEY)
        got = sota_model(x, data_key=DATA_KEY)
    assert got.shape == (2, N_NEURONS)
    assert (got - expected).abs().max().item() < 1e-5
