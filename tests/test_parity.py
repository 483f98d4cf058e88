"""Parity with neuralpredictors 0.3.0: same arguments + the peer's weights → the same outputs.

Each test builds the peer's module and ours with the same arguments, loads the peer's state dict
into ours with ``strict=True`` (so the parameter names and shapes match too), and compares the
outputs on the same random input in eval mode, and the regularizer values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.peer import import_neuralpredictors

try:
    neuralpredictors = import_neuralpredictors()
except ImportError:  # the peer is a dev-only dependency
    pytest.skip("neuralpredictors 0.3.0 is not installed", allow_module_level=True)

from neuralpredictors.layers import cores as peer_cores  # noqa: E402
from neuralpredictors.layers import readouts as peer_readouts  # noqa: E402
from neuralpredictors.layers import shifters as peer_shifters  # noqa: E402

from pipeline.models import shifters  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

ATOL = 1e-5


def _copy_weights(peer: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Load the peer's state dict into ours; strict, so names and shapes must agree exactly."""
    ours.load_state_dict(peer.state_dict(), strict=True)
    peer.eval()
    ours.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes differ: peer {tuple(a.shape)} vs ours {tuple(b.shape)}"
    return (a.detach() - b.detach()).abs().max().item()


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every float parameter and BN statistic a random value so that no zero hides a bug."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or "source_grid" in name:
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise)
            else:
                tensor.copy_(tensor + 0.1 * (noise - 0.5))


# ----------------------------------------------------------------------------------------- core
CORE_BASE = dict(
    input_channels=1, hidden_channels=6, input_kern=9, hidden_kern=7, layers=3, gamma_input=6.3831
)
CORE_CONFIGS = {
    "sota_depth_separable": dict(
        depth_separable=True,
        stack=-1,
        pad_input=False,
        bias=False,
        momentum=0.9,
        laplace_padding=None,
        input_regularizer="LaplaceL2norm",
        use_avg_reg=False,
    ),
    "skip_stack_all": dict(
        skip=2, stack=None, pad_input=True, gamma_hidden=0.3, input_regularizer="LaplaceL2"
    ),
    "no_pad_input_stack_list": dict(pad_input=False, stack=[0, 2], gamma_hidden=0.1, laplace_padding=None),
    "no_batch_norm": dict(batch_norm=False, bias=True, gamma_hidden=0.2),
    "linear": dict(linear=True, final_nonlinearity=False, bias=False),
    "bn_bias_layer": dict(independent_bn_bias=False, batch_norm_scale=False, bias=True),
    "bn_scale_layer": dict(independent_bn_bias=False, batch_norm_scale=True, bias=False),
    "no_final_nonlinearity_elu_shift": dict(final_nonlinearity=False, elu_shift=(0.5, 0.2)),
}


@pytest.mark.parametrize("name", sorted(CORE_CONFIGS))
def test_stacked2d_core_parity(name: str) -> None:
    from pipeline.models.cores import Stacked2dCore

    config = {**CORE_BASE, **CORE_CONFIGS[name]}
    torch.manual_seed(0)
    peer = peer_cores.Stacked2dCore(**config)
    ours = Stacked2dCore(**config)
    _randomize(peer)
    _copy_weights(peer, ours)
    x = torch.randn(2, 1, 36, 64)
    assert _max_diff(peer(x), ours(x)) < ATOL
    assert abs(peer.regularizer().item() - ours.regularizer().item()) < 1e-4 * max(
        1.0, abs(peer.regularizer().item())
    )
    # train mode uses the batch statistics: must agree as well
    peer.train()
    ours.train()
    assert _max_diff(peer(x), ours(x)) < ATOL


# ------------------------------------------------------------------------------------- readouts
IN_SHAPE = (5, 9, 13)  # channels, height, width (non-square so that x/y mix-ups show)
N_NEURONS = 17


def _features(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *IN_SHAPE, generator=torch.Generator().manual_seed(1))


def _readout_outputs(peer, ours, shift: bool = True, out_idx: bool = True) -> None:
    """Compare plain, shifted and neuron-subset outputs of two readouts in eval mode."""
    x = _features()
    assert _max_diff(peer(x), ours(x)) < ATOL
    if shift:
        s = 0.2 * torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(2))
        assert _max_diff(peer(x, shift=s), ours(x, shift=s)) < ATOL
    if out_idx:
        idx = np.array([0, 3, 4, 16])
        assert _max_diff(peer(x, out_idx=idx), ours(x, out_idx=idx)) < ATOL


def _sampled_outputs_match(peer, ours) -> None:
    """Train mode draws positions from the global RNG: the same seed gives the same draws and outputs."""
    peer.train()
    ours.train()
    x = _features()
    torch.manual_seed(5)
    expected = peer(x)
    torch.manual_seed(5)
    got = ours(x)
    assert _max_diff(expected, got) < ATOL
    assert _max_diff(expected, peer(x)) > 1e-4  # and the draws do matter


def _regularizers_match(peer, ours) -> None:
    for reduction in ("sum", "mean"):
        expected = float(peer.regularizer(reduction=reduction))
        got = float(ours.regularizer(reduction=reduction))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), reduction


@pytest.mark.parametrize("normalize", [True, False])
def test_full_factorized2d_parity(normalize: bool) -> None:
    from pipeline.models.readouts import FullFactorized2d

    args = dict(in_shape=IN_SHAPE, outdims=N_NEURONS, bias=True, normalize=normalize, init_noise=0.1)
    peer = peer_readouts.FullFactorized2d(**args, spatial_and_feature_reg_weight=0.7)
    ours = FullFactorized2d(**args, spatial_and_feature_reg_weight=0.7)
    _randomize(peer)
    _copy_weights(peer, ours)
    x = _features()
    # the peer ignores out_idx and rejects shift (known defects), so only the plain output is compared
    assert _max_diff(peer(x), ours(x)) < ATOL
    assert _max_diff(peer(x)[:, [1, 5]], ours(x, out_idx=[1, 5])) < ATOL
    # Regularizer: the peer broadcasts (N, 1) * (N,) and so returns (sum_n |m_n|_1)(sum_n |w_n|_1), an
    # outer product, instead of the documented sum_n |m_n|_1 |w_n|_1; we implement the documented one.
    mask_l1 = peer.normalized_spatial.reshape(N_NEURONS, -1).abs().sum(1).detach()
    feature_l1 = peer.features.abs().sum(1).detach()
    assert float(peer.regularizer()) == pytest.approx(0.7 * float(mask_l1.sum() * feature_l1.sum()), rel=1e-5)
    assert float(ours.regularizer()) == pytest.approx(0.7 * float((mask_l1 * feature_l1).sum()), rel=1e-5)
    c, h, w = IN_SHAPE
    assert float(ours.regularizer(reduction="mean")) == pytest.approx(
        0.7 * float((mask_l1 * feature_l1).sum()) / (N_NEURONS * c * h * w), rel=1e-5
    )


def test_gaussian2d_parity() -> None:
    from pipeline.models.readouts import Gaussian2d

    args = dict(in_shape=IN_SHAPE, outdims=N_NEURONS, bias=True, init_mu_range=0.5, init_sigma_range=0.3)
    peer = peer_readouts.Gaussian2d(**args, feature_reg_weight=0.5)
    ours = Gaussian2d(**args, feature_reg_weight=0.5)
    _randomize(peer)
    _copy_weights(peer, ours)
    _readout_outputs(peer, ours)
    _regularizers_match(peer, ours)
    _sampled_outputs_match(peer, ours)


@pytest.mark.parametrize("gauss_type", ["full", "uncorrelated", "isotropic"])
@pytest.mark.parametrize("predictor", [False, True])
def test_full_gaussian2d_parity(gauss_type: str, predictor: bool) -> None:
    from pipeline.models.readouts import FullGaussian2d

    args = dict(in_shape=IN_SHAPE, outdims=N_NEURONS, bias=True, init_mu_range=0.3, init_sigma=0.2)
    if predictor:
        source = np.random.default_rng(3).normal(size=(N_NEURONS, 2)) * 50 + 200  # raw cortex coordinates
        args.update(
            grid_mean_predictor=dict(hidden_layers=1, hidden_features=7, final_tanh=True),
            source_grid=source,
        )
    peer = peer_readouts.FullGaussian2d(**args, gauss_type=gauss_type, feature_reg_weight=0.3)
    ours = FullGaussian2d(**args, gauss_type=gauss_type, feature_reg_weight=0.3)
    _randomize(peer)
    _copy_weights(peer, ours)
    if predictor:  # both centre the cortex coordinates and scale them to max |.| = 1
        grid = ours.source_grid
        assert grid.abs().max().item() == pytest.approx(1.0)
        assert grid.mean(0).abs().max().item() < 1e-5
    _readout_outputs(peer, ours)
    _regularizers_match(peer, ours)
    _sampled_outputs_match(peer, ours)


def test_point_pooled2d_parity() -> None:
    from pipeline.models.readouts import PointPooled2d

    args = dict(in_shape=IN_SHAPE, outdims=N_NEURONS, pool_steps=2, bias=True, pool_kern=2, init_range=0.4)
    peer = peer_readouts.PointPooled2d(**args, feature_reg_weight=0.2)
    ours = PointPooled2d(**args, feature_reg_weight=0.2)
    _randomize(peer)
    _copy_weights(peer, ours)
    _readout_outputs(peer, ours)
    _regularizers_match(peer, ours)


def test_multi_readout_parity() -> None:
    from pipeline.models.readouts import FullGaussian2d, MultiReadoutBase

    in_shapes = {"a-1-1": IN_SHAPE, "b-2-2": IN_SHAPE}
    n_neurons = {"a-1-1": N_NEURONS, "b-2-2": 4}
    means = {k: torch.rand(n) for k, n in n_neurons.items()}
    kwargs = dict(base_readout=FullGaussian2d, bias=True, init_mu_range=0.3, init_sigma=0.2)
    peer = peer_readouts.MultiReadoutBase(
        in_shapes,
        n_neurons,
        mean_activity_dict=means,
        **{**kwargs, "base_readout": peer_readouts.FullGaussian2d},
    )
    ours = MultiReadoutBase(in_shapes, n_neurons, mean_activity_dict=means, **kwargs)
    _randomize(peer)
    _copy_weights(peer, ours)
    x = _features()
    for key in in_shapes:
        assert _max_diff(peer(x, data_key=key), ours(x, data_key=key)) < ATOL
        assert float(ours.regularizer(data_key=key)) == pytest.approx(float(peer.regularizer(data_key=key)))


@pytest.mark.parametrize("readout", ["FullGaussian2d", "FullFactorized2d"])
def test_shared_parameters_multi_readout_parity(readout: str) -> None:
    """Feature (and grid) sharing by match id: the peer's state dict loads strictly and predicts the same."""
    from pipeline.models import readouts as our_readouts

    in_shapes = {"a-1-1": IN_SHAPE, "b-2-2": IN_SHAPE}
    n_neurons = {"a-1-1": 5, "b-2-2": 4}
    ids = {"a-1-1": np.array([3, 1, 4, 1, 5]), "b-2-2": np.array([5, 9, 3, 2])}
    kwargs = dict(bias=True, share_features=True, shared_match_ids=ids)
    if readout == "FullGaussian2d":
        kwargs.update(share_grid=True, init_mu_range=0.3, init_sigma=0.2)
    peer = peer_readouts.MultiReadoutSharedParametersBase(
        in_shapes, n_neurons, base_readout=getattr(peer_readouts, readout), **kwargs
    )
    ours = our_readouts.MultiReadoutSharedParametersBase(
        in_shapes, n_neurons, base_readout=getattr(our_readouts, readout), **kwargs
    )
    assert ours["b-2-2"].shared_features is ours["a-1-1"].shared_features
    _randomize(peer)
    _copy_weights(peer, ours)
    assert ours["b-2-2"].shared_features is ours["a-1-1"].shared_features  # still one parameter
    x = _features()
    for key in in_shapes:
        assert _max_diff(peer(x, data_key=key), ours(x, data_key=key)) < ATOL


# ------------------------------------------------------------------------------------- shifters
@pytest.mark.parametrize("shift_layers", [1, 3])
def test_mlp_shifter_parity(shift_layers: int) -> None:
    keys = ["s1", "26872-17-20"]
    peer = peer_shifters.MLPShifter(
        keys, input_channels=2, hidden_channels_shifter=5, shift_layers=shift_layers
    )
    ours = shifters.MLPShifter(keys, input_channels=2, hidden_channels_shifter=5, shift_layers=shift_layers)
    _randomize(peer)
    _copy_weights(peer, ours)
    pupil = torch.randn(6, 2)
    for key in keys:
        assert _max_diff(peer[key](pupil), ours[key](pupil)) < ATOL
    # with gamma_shifter = 0 (the sensorium default) both regularizers are 0
    assert float(ours.regularizer("s1")) == float(peer.regularizer("s1")) == 0.0


def test_static_affine_shifter_parity() -> None:
    keys = ["s1"]
    peer = peer_shifters.StaticAffine2dShifter(keys, gamma_shifter=0.5)
    ours = shifters.StaticAffine2dShifter(keys, gamma_shifter=0.5)
    _randomize(peer)
    _copy_weights(peer, ours)
    pupil = torch.randn(6, 2)
    assert _max_diff(peer["s1"](pupil), ours["s1"](pupil)) < ATOL
    assert float(ours.regularizer("s1")) == pytest.approx(float(peer.regularizer("s1")))


# ------------------------------------------------------------------------------------- encoder
def test_sota_encoder_parity() -> None:
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from tests.test_state_dict import SOTA_CONFIG, peer_sota_model

    key, n = "26872-17-20", 40
    coordinates = np.random.default_rng(0).uniform(0, 400, size=(n, 3))
    peer = peer_sota_model(key, n, coordinates)
    info = {key: {"n_neurons": n, "input_shape": [1, 36, 64], "cortex_coordinates": coordinates.tolist()}}
    ours = stacked_core_full_gauss_readout(data_info=info, seed=42, **SOTA_CONFIG)
    _randomize(peer)
    _copy_weights(peer, ours)
    x = torch.randn(2, 1, 36, 64)
    assert _max_diff(peer(x, data_key=key), ours(x, data_key=key)) < ATOL
    assert float(ours.regularizer(data_key=key)) == pytest.approx(
        float(peer.regularizer(data_key=key)), rel=1e-5
    )


def test_seeded_sota_build_gives_sensorium_initial_weights() -> None:
    """Same seed → the same initial model as sensorium's builder (it seeds, then builds core, readout)."""
    import random

    from pipeline.models.builders import stacked_core_full_gauss_readout
    from tests.test_state_dict import SOTA_CONFIG, peer_sota_model

    key, n = "26872-17-20", 50
    coordinates = np.random.default_rng(0).uniform(0, 400, size=(n, 3))
    random.seed(42)
    np.random.seed(42)
    torch.manual_seed(42)
    peer = peer_sota_model(key, n, coordinates)
    info = {key: {"n_neurons": n, "input_shape": [1, 36, 64], "cortex_coordinates": coordinates.tolist()}}
    ours = stacked_core_full_gauss_readout(data_info=info, seed=42, **SOTA_CONFIG)
    expected, got = peer.state_dict(), ours.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
