"""Tests of the per-session readouts and the multi-session readout container."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

from pipeline.models.readouts import (
    ClonedReadout,
    FullFactorized2d,
    FullGaussian2d,
    FullSXF,
    Gaussian2d,
    MultipleFullFactorized2d,
    MultipleFullGaussian2d,
    MultipleGaussian2d,
    MultiplePointPooled2d,
    MultiReadoutBase,
    PointPooled2d,
    Readout,
    SpatialXFeatureLinear,
    UnknownDataKeyError,
)
from pipeline.models.readouts.base import NEURON_PARAMETER_KEYS
from pipeline.models.readouts.factorized import factorized_readout, shift_feature_map

C, H, W, N, B = 4, 6, 8, 5, 3
IN_SHAPE = (C, H, W)

FACTORIES = {
    "factorized": lambda **kw: FullFactorized2d(IN_SHAPE, N, bias=True, **kw),
    "gaussian": lambda **kw: Gaussian2d(IN_SHAPE, N, bias=True, **kw),
    "full_gaussian": lambda **kw: FullGaussian2d(IN_SHAPE, N, bias=True, **kw),
    "uncorrelated_gaussian": lambda **kw: FullGaussian2d(
        IN_SHAPE, N, bias=True, gauss_type="uncorrelated", **kw
    ),
    "isotropic_gaussian": lambda **kw: FullGaussian2d(IN_SHAPE, N, bias=True, gauss_type="isotropic", **kw),
    "predicted_grid": lambda **kw: FullGaussian2d(
        IN_SHAPE,
        N,
        bias=True,
        grid_mean_predictor={"hidden_layers": 1, "hidden_features": 6, "final_tanh": True},
        source_grid=np.random.default_rng(0).normal(size=(N, 2)),
        **kw,
    ),
    "point_pooled": lambda **kw: PointPooled2d(
        IN_SHAPE, N, pool_steps=1, bias=True, pool_kern=2, init_range=0.5, **kw
    ),
}
SAMPLING = ["gaussian", "full_gaussian", "uncorrelated_gaussian", "isotropic_gaussian", "predicted_grid"]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))


def build(name, **kwargs):
    torch.manual_seed(0)
    readout = FACTORIES[name](**kwargs)
    with torch.no_grad():  # features away from their constant init so neurons differ
        for p in readout.parameters():
            if p.dim() >= 2 and p.shape[-1] == N:
                p.add_(0.1 * torch.randn_like(p))
    return readout


@pytest.mark.parametrize("name", FACTORIES)
def test_shape_determinism_and_out_idx(name, x):
    readout = build(name).eval()
    y = readout(x)
    assert y.shape == (B, N)
    assert torch.equal(y, readout(x))
    for idx in ([3, 0], np.array([False, True, True, False, True]), torch.tensor([4]), np.array([1, 2])):
        expected = (
            y[:, np.nonzero(idx)[0]] if isinstance(idx, np.ndarray) and idx.dtype == bool else y[:, idx]
        )
        torch.testing.assert_close(readout(x, out_idx=idx), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", SAMPLING)
def test_train_mode_samples_positions(name, x):
    readout = build(name).train()
    first, second = readout(x), readout(x)
    assert not torch.allclose(first, second)
    # sample=False overrides the mode: the means are used
    assert torch.equal(readout(x, sample=False), readout.eval()(x))
    assert not torch.allclose(readout(x, sample=True), readout(x))


@pytest.mark.parametrize("name", FACTORIES)
def test_shift_moves_output(name, x):
    readout = build(name).eval()
    shift = torch.tensor([[0.3, -0.2], [0.0, 0.0], [-0.5, 0.4]])
    shifted = readout(x, shift=shift)
    assert not torch.allclose(shifted[0], readout(x)[0])
    torch.testing.assert_close(shifted[1], readout(x)[1])  # zero shift for image 1
    with pytest.raises(ValueError, match="shift"):
        readout(x, shift=torch.zeros(B, 3))


def test_shift_direction_agrees_between_factorized_and_gaussian(x):
    """A factorized readout with a one-pixel mask equals a Gaussian readout at that pixel, shifted or not."""
    row, col = 2, 5
    gauss = Gaussian2d(IN_SHAPE, 1, bias=False).eval()
    factorized = FullFactorized2d(IN_SHAPE, 1, bias=False).eval()
    with torch.no_grad():
        gauss.mu.copy_(torch.tensor([2 * col / (W - 1) - 1, 2 * row / (H - 1) - 1]).view(1, 1, 1, 2))
        gauss.features.copy_(torch.arange(1.0, C + 1).view(1, C, 1, 1))
        factorized.spatial.zero_()
        factorized.spatial[0, row, col] = 1.0
        factorized._features.copy_(torch.arange(1.0, C + 1).view(1, C))
    torch.testing.assert_close(factorized(x), gauss(x), atol=1e-5, rtol=1e-5)
    one_pixel = torch.tensor([[2 / (W - 1), 0.0], [0.0, 2 / (H - 1)], [-2 / (W - 1), -2 / (H - 1)]])
    torch.testing.assert_close(
        factorized(x, shift=one_pixel), gauss(x, shift=one_pixel), atol=1e-5, rtol=1e-5
    )
    # moving right by one pixel reads the neighbouring column
    expected = (x[0, :, row, col + 1] * torch.arange(1.0, C + 1)).sum()
    torch.testing.assert_close(gauss(x, shift=one_pixel)[0, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_gradients_reach_every_parameter(name, x):
    readout = build(name).train()
    loss = readout(x, shift=0.1 * torch.ones(B, 2)).square().sum() + readout.regularizer()
    loss.backward()
    for param_name, p in readout.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", FACTORIES)
def test_regularizer_reductions(name):
    readout = build(name)
    total, mean = readout.regularizer(), readout.regularizer(reduction="mean")
    assert total.dim() == 0 and total.item() > 0 and total.requires_grad
    assert 0 < mean.item() < total.item()
    torch.testing.assert_close(readout.regularizer(average=True), mean)
    per_term = readout.regularizer(reduction=None)
    assert per_term.numel() > 1
    torch.testing.assert_close(per_term.sum(), total)
    with pytest.raises(ValueError, match="reduction"):
        readout.regularizer(reduction="max")


def test_regularizer_values():
    gauss = Gaussian2d(IN_SHAPE, N, bias=True, gamma_readout=0.5)
    assert gauss.regularizer().item() == pytest.approx(0.5 * N)  # features are 1/C each: sum |f| = N
    factorized = FullFactorized2d(IN_SHAPE, N, bias=True, spatial_and_feature_reg_weight=2.0)
    mask = factorized.normalized_spatial.detach().reshape(N, -1).abs().sum(1)
    expected = 2.0 * (mask * factorized.features.detach().abs().sum(1)).sum()
    assert factorized.regularizer().item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_bad_inputs_raise_clear_errors(name, x):
    readout = build(name)
    with pytest.raises(ValueError, match=r"built for core features .* = \(4, 6, 8\)"):
        readout(torch.randn(B, C + 1, H, W))
    with pytest.raises(ValueError, match="got \\(4, 7, 8\\)"):
        readout(torch.randn(B, C, H + 1, W))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        readout(x[0])
    with pytest.raises(ValueError, match="out_idx"):
        readout(x, out_idx=[N])
    with pytest.raises(TypeError, match="out_idx"):
        readout(x, out_idx=[0.5])


def test_constructor_errors():
    with pytest.raises(ValueError, match="in_shape"):
        Gaussian2d((4, 6), N, bias=True)
    with pytest.raises(ValueError, match="outdims"):
        FullGaussian2d(IN_SHAPE, 0, bias=True)
    with pytest.raises(ValueError, match="gauss_type"):
        FullGaussian2d(IN_SHAPE, N, bias=True, gauss_type="diagonal")
    with pytest.raises(ValueError, match="init_mu_range"):
        FullGaussian2d(IN_SHAPE, N, bias=True, init_mu_range=1.5)
    with pytest.raises(ValueError, match="source_grid"):
        FullGaussian2d(IN_SHAPE, N, bias=True, grid_mean_predictor={}, source_grid=np.zeros((N + 1, 2)))
    with pytest.raises(ValueError, match="mean_activity"):
        Gaussian2d(IN_SHAPE, N, bias=True, mean_activity=np.ones(N + 1))
    with pytest.raises(ValueError, match="init_range"):
        PointPooled2d(IN_SHAPE, N, pool_steps=1, bias=True, pool_kern=2, init_range=0.0)


def test_no_warnings_and_bias_initialisation():
    mean_activity = np.linspace(0.5, 2.5, N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in FACTORIES:
            readout = FACTORIES[name](mean_activity=mean_activity)
            np.testing.assert_allclose(readout.bias.detach().numpy(), mean_activity, rtol=1e-6)
            readout.initialize(np.zeros(N))
            assert torch.count_nonzero(readout.bias) == 0
    assert Gaussian2d(IN_SHAPE, N, bias=False).bias is None


def test_parameters_are_never_clamped_in_place(x):
    gauss = Gaussian2d(IN_SHAPE, N, bias=False).eval()
    full = FullGaussian2d(IN_SHAPE, N, bias=False).eval()
    with torch.no_grad():
        gauss.mu.fill_(1.5)
        gauss.sigma.fill_(-0.3)
        full._mu.fill_(-2.0)
    for readout, param, value in ((gauss, gauss.mu, 1.5), (full, full._mu, -2.0)):
        before = readout(x)
        assert torch.all(param == value)
        with torch.no_grad():
            param.clamp_(-1, 1)
        torch.testing.assert_close(readout(x), before)  # out-of-range means read the border
    factorized = FullFactorized2d(IN_SHAPE, N, bias=True, positive_weights=True)
    with torch.no_grad():
        factorized._features.fill_(-1.0)
    factorized(x)
    assert torch.all(factorized._features == -1.0)


def test_out_of_range_mean_still_gets_gradient(x):
    gauss = Gaussian2d(IN_SHAPE, N, bias=False).eval()
    with torch.no_grad():
        gauss.mu.fill_(1.5)
    gauss(x).sum().backward()
    assert gauss.mu.grad.abs().sum() > 0


def test_positive_weights_constrain_the_forward_pass():
    readout = FullFactorized2d(IN_SHAPE, N, bias=True, positive_weights=True).eval()
    with torch.no_grad():
        readout.spatial.abs_()
        readout._features.copy_(-torch.rand(N, C))
        readout.bias.fill_(0.25)
    x = torch.rand(B, C, H, W)
    torch.testing.assert_close(readout(x), torch.full((B, N), 0.25))
    unconstrained = FullFactorized2d(IN_SHAPE, N, bias=True)
    unconstrained.load_state_dict(readout.state_dict())
    assert torch.all(unconstrained(x) < 0.25)
    assert set(readout.state_dict()) == {"spatial", "_features", "bias"}


def test_reprs_and_parameter_counts_of_the_tutorial():
    in_shape_dict = {"21067-10-18": (64, 144, 256), "22846-10-16": (64, 144, 256)}
    n_neurons_dict = {"21067-10-18": 8372, "22846-10-16": 7344}
    with torch.device("meta"):  # shapes only: the factorized readout would be 1.2 GB
        factorized = MultiReadoutBase(in_shape_dict, n_neurons_dict, base_readout=FullFactorized2d, bias=True)
        gaussian = MultiReadoutBase(in_shape_dict, n_neurons_dict, base_readout=Gaussian2d, bias=True)
        full = {
            t: FullGaussian2d((64, 144, 256), 8372, bias=True, gauss_type=t)
            for t in ("full", "uncorrelated", "isotropic")
        }

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(factorized["21067-10-18"]) == 309_169_588
    assert count(gaussian["21067-10-18"]) == 577_668
    assert [count(full[t]) for t in ("full", "uncorrelated", "isotropic")] == [594_412, 577_668, 569_296]
    assert (
        repr(factorized["21067-10-18"]) == "FullFactorized2d (64 x 144 x 256 -> 8372) with bias, normalized"
    )
    assert repr(gaussian["21067-10-18"]) == "Gaussian2d (64 x 144 x 256 -> 8372) with bias"
    assert repr(full["full"]) == "full FullGaussian2d (64 x 144 x 256 -> 8372) with bias"
    assert repr(full["isotropic"]) == "isotropic FullGaussian2d (64 x 144 x 256 -> 8372) with bias"
    assert repr(SpatialXFeatureLinear((2, 3, 4), 5, bias=False, normalize=False)) == (
        "SpatialXFeatureLinear (2 x 3 x 4 -> 5), unnormalized"
    )
    assert repr(PointPooled2d((2, 3, 4), 5, 1, False, 2, 0.1)).startswith(
        "PointPooled2d (2 x 3 x 4 -> 5) and pooling for 1 steps"
    )


def test_state_dict_names():
    assert set(FullFactorized2d(IN_SHAPE, N, bias=True).state_dict()) == {"spatial", "_features", "bias"}
    assert {k: tuple(v.shape) for k, v in Gaussian2d(IN_SHAPE, N, bias=True).state_dict().items()} == {
        "mu": (1, N, 1, 2),
        "sigma": (1, N, 1, 2),
        "features": (1, C, 1, N),
        "bias": (N,),
    }
    assert {k: tuple(v.shape) for k, v in FullGaussian2d(IN_SHAPE, N, bias=True).state_dict().items()} == {
        "_mu": (1, N, 1, 2),
        "sigma": (1, N, 2, 2),
        "_features": (1, C, 1, N),
        "bias": (N,),
    }
    predicted = build("predicted_grid").state_dict()
    assert {k: tuple(v.shape) for k, v in predicted.items()} == {
        "sigma": (1, N, 2, 2),
        "_features": (1, C, 1, N),
        "bias": (N,),
        "source_grid": (N, 2),
        "mu_transform.0.weight": (6, 2),
        "mu_transform.0.bias": (6,),
        "mu_transform.2.weight": (2, 6),
        "mu_transform.2.bias": (2,),
    }
    grid = predicted["source_grid"]
    torch.testing.assert_close(grid.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    assert grid.abs().max().item() == pytest.approx(1.0)


def test_neuron_parameters_gaussian():
    readout = FullGaussian2d(IN_SHAPE, N, bias=True, mean_activity=np.arange(N, dtype=float))
    with torch.no_grad():
        readout._mu[0, :, 0] = torch.tensor([[0.1, -0.2]] * N)
        readout._mu[0, 0, 0] = torch.tensor([1.4, 0.3])  # clamped to the border
        readout.sigma.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]).expand(1, N, 2, 2))
    params = readout.neuron_parameters()
    assert set(params) == {
        "mu_x",
        "mu_y",
        "sigma_x",
        "sigma_y",
        "sigma_xy",
        "feature_norm",
        "bias",
        "features",
    }
    for key in ("mu_x", "mu_y", "sigma_x", "sigma_y", "sigma_xy", "feature_norm", "bias"):
        assert params[key].dtype == np.float64 and params[key].shape == (N,)
    assert params["features"].dtype == np.float32 and params["features"].shape == (N, C)
    assert params["mu_x"][0] == pytest.approx(1.0) and params["mu_x"][1] == pytest.approx(0.1)
    assert params["mu_y"][1] == pytest.approx(-0.2)
    # covariance = S S^T with S = [[2, 0], [1, 1]] -> [[4, 2], [2, 2]]
    np.testing.assert_allclose(params["sigma_x"], 2.0)
    np.testing.assert_allclose(params["sigma_y"], np.sqrt(2.0))
    np.testing.assert_allclose(params["sigma_xy"], 2.0)
    np.testing.assert_allclose(params["feature_norm"], np.sqrt(C) / C, rtol=1e-6)
    np.testing.assert_allclose(params["bias"], np.arange(N))
    iso = FullGaussian2d(IN_SHAPE, N, bias=False, gauss_type="isotropic", init_sigma=0.3).neuron_parameters()
    np.testing.assert_allclose(iso["sigma_y"], 0.3, rtol=1e-6)
    assert np.all(iso["sigma_xy"] == 0) and np.all(np.isnan(iso["bias"]))
    pooled = PointPooled2d(IN_SHAPE, N, 1, True, 2, 0.5).neuron_parameters()
    assert np.all(np.isnan(pooled["sigma_x"])) and pooled["features"].shape == (N, 2 * C)


def _concrete_readout_classes() -> set[type]:
    found, todo = set(), [Readout]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not inspect.isabstract(cls) and cls.__module__.startswith("pipeline."):
            found.add(cls)
    return found


#: one instance of every readout class (with channels C' = 2 * C for the pooled one)
EVERY_READOUT = {
    FullFactorized2d: lambda: FullFactorized2d(IN_SHAPE, N, bias=True),
    SpatialXFeatureLinear: lambda: SpatialXFeatureLinear(IN_SHAPE, N, bias=False),
    FullSXF: lambda: FullSXF(IN_SHAPE, N, bias=True, shared_features={"match_ids": np.arange(N) % 3}),
    Gaussian2d: lambda: Gaussian2d(IN_SHAPE, N, bias=True),
    FullGaussian2d: lambda: FullGaussian2d(
        IN_SHAPE, N, bias=False, gauss_type="uncorrelated", shared_features={"match_ids": np.arange(N) % 2}
    ),
    PointPooled2d: lambda: PointPooled2d(IN_SHAPE, N, pool_steps=1, bias=True, pool_kern=2, init_range=0.5),
    ClonedReadout: lambda: ClonedReadout(FullGaussian2d(IN_SHAPE, N, bias=True)),
}


def test_every_readout_returns_exactly_the_neuron_parameter_keys():
    """The names the tables store come from NEURON_PARAMETER_KEYS; no readout may return others."""
    missing = _concrete_readout_classes() - set(EVERY_READOUT)
    assert not missing, f"add the new readout classes {missing} to EVERY_READOUT"
    assert NEURON_PARAMETER_KEYS == (
        "mu_x",
        "mu_y",
        "sigma_x",
        "sigma_y",
        "sigma_xy",
        "feature_norm",
        "bias",
        "features",
    )
    for cls, make in EVERY_READOUT.items():
        torch.manual_seed(0)
        readout = make()
        params = readout.neuron_parameters()
        assert tuple(params) == NEURON_PARAMETER_KEYS, cls.__name__
        for key in NEURON_PARAMETER_KEYS[:-1]:
            assert params[key].dtype == np.float64 and params[key].shape == (N,), (cls.__name__, key)
        channels = readout.neuron_features().shape[1]
        assert params["features"].dtype == np.float32, cls.__name__
        assert params["features"].shape == (N, channels) and channels in (C, 2 * C), cls.__name__
        np.testing.assert_allclose(
            params["feature_norm"], np.linalg.norm(params["features"].astype(np.float64), axis=1), rtol=1e-6
        )


def test_neuron_parameters_factorized():
    readout = FullFactorized2d(IN_SHAPE, 2, bias=False)
    with torch.no_grad():
        readout.spatial.zero_()
        readout.spatial[0, 0, W - 1] = -3.0  # peak at the top-right pixel
        readout.spatial[1, 2, 1] = 1.0  # two equal pixels, one row apart
        readout.spatial[1, 3, 1] = 1.0
    params = readout.neuron_parameters()
    assert (params["mu_x"][0], params["mu_y"][0]) == (1.0, -1.0)
    assert params["sigma_x"][0] == 0 and params["sigma_y"][0] == 0
    row_step = 2 / (H - 1)
    assert params["mu_x"][1] == pytest.approx(-1 + 2 / (W - 1))
    assert params["sigma_y"][1] == pytest.approx(row_step / 2)
    assert params["sigma_x"][1] == pytest.approx(0.0) and params["sigma_xy"][1] == pytest.approx(0.0)


def test_multi_readout_dispatch_and_errors(x):
    multi = MultiReadoutBase(
        {"a": IN_SHAPE, "b": IN_SHAPE}, {"a": 3, "b": 4}, base_readout=Gaussian2d, bias=True
    )
    multi.eval()
    assert multi(x, data_key="a").shape == (B, 3) and multi(x, data_key="b").shape == (B, 4)
    torch.testing.assert_close(multi(x, data_key="b"), multi["b"](x))
    with pytest.raises(UnknownDataKeyError, match="unknown data_key 'c'"):
        multi(x, data_key="c")
    with pytest.raises(KeyError):
        multi.regularizer("c")
    with pytest.raises(ValueError, match="data_key is required"):
        multi(x)
    total = multi.regularizer()
    torch.testing.assert_close(total, multi.regularizer("a") + multi.regularizer("b"))
    multi.initialize({"a": np.ones(3), "b": np.full(4, 2.0)})
    assert torch.all(multi["b"].bias == 2.0)
    single = MultipleGaussian2d({"only": IN_SHAPE}, {"only": 3}, bias=True)
    assert single(x).shape == (B, 3) and single.regularizer().dim() == 0
    assert set(single.neuron_parameters()) >= {"mu_x", "features"}
    with pytest.raises(ValueError, match="base_readout"):
        MultiReadoutBase({"a": IN_SHAPE}, {"a": 3})
    with pytest.raises(ValueError, match="in_shape_dict"):
        MultiReadoutBase({"a": IN_SHAPE}, {"a": 3, "b": 3}, base_readout=Gaussian2d, bias=True)


def test_clone_readout_shares_parameters(x):
    multi = MultiReadoutBase(
        {"a": IN_SHAPE, "b": IN_SHAPE},
        {"a": N, "b": N},
        base_readout=FullGaussian2d,
        bias=True,
        clone_readout=True,
    ).eval()
    assert isinstance(multi["b"], ClonedReadout)
    assert multi["b"].source is multi["a"]
    own = {id(p) for p in multi["b"].parameters()}
    assert {id(p) for p in multi["a"].parameters()} <= own
    with torch.no_grad():
        multi["b"].alpha.fill_(2.0)
        multi["b"].beta.fill_(0.5)
    torch.testing.assert_close(multi(x, data_key="b"), 2 * multi(x, data_key="a") + 0.5)
    torch.testing.assert_close(multi(x, data_key="b", out_idx=[1, 3]), multi(x, data_key="b")[:, [1, 3]])
    reg = multi.regularizer("b")
    assert reg.item() == pytest.approx(2 * multi.regularizer("a").item(), rel=1e-6)
    reg.backward()
    assert multi["b"].alpha.grad is not None
    params = multi.neuron_parameters("b")
    np.testing.assert_allclose(
        params["feature_norm"], 2 * multi.neuron_parameters("a")["feature_norm"], rtol=1e-6
    )
    multi.initialize()
    assert torch.all(multi["b"].alpha == 1.0)
    with pytest.raises(ValueError, match="clone_readout"):
        MultiReadoutBase(
            {"a": IN_SHAPE, "b": IN_SHAPE},
            {"a": N, "b": N + 1},
            base_readout=Gaussian2d,
            bias=True,
            clone_readout=True,
        )


def test_multiple_full_gaussian_sensorium_arguments(x):
    rng = np.random.default_rng(0)
    source_grids = {"a": rng.normal(size=(3, 3)), "b": rng.normal(size=(4, 3))}
    multi = MultipleFullGaussian2d(
        in_shape_dict={"a": IN_SHAPE, "b": IN_SHAPE},
        n_neurons_dict={"a": 3, "b": 4},
        loader=None,
        bias=True,
        init_mu_range=0.3,
        init_sigma=0.1,
        gamma_readout=0.0076,
        gauss_type="full",
        grid_mean_predictor={
            "type": "cortex",
            "input_dimensions": 2,
            "hidden_layers": 1,
            "hidden_features": 30,
            "final_tanh": True,
        },
        source_grids=source_grids,
    )
    assert multi["b"].source_grid.shape == (4, 2)
    assert multi["a"].mu_transform[0].weight.shape == (30, 2)
    assert multi["a"].feature_reg_weight == pytest.approx(0.0076)
    assert multi.eval()(x, data_key="b").shape == (B, 4)
    with pytest.raises(ValueError, match="source_grids"):
        MultipleFullGaussian2d({"a": IN_SHAPE}, {"a": 3}, bias=True, grid_mean_predictor={"type": "cortex"})


def test_shared_features_and_grid_across_sessions(x):
    ids = {"a": np.array([10, 11, 12, 13]), "b": np.array([13, 12, 11, 10])}
    multi = MultipleFullGaussian2d(
        {"a": IN_SHAPE, "b": IN_SHAPE},
        {"a": 4, "b": 4},
        bias=True,
        share_features=True,
        share_grid=True,
        shared_match_ids=ids,
    )
    assert multi["b"]._features is multi["a"]._features
    assert multi["b"]._mu is multi["a"]._mu
    assert multi["b"].regularizer().item() == 0.0 and multi["a"].regularizer().item() > 0
    # same ids -> same positions (the second session's transform starts at the identity)
    torch.testing.assert_close(multi["b"].mu[0, :, 0], multi["a"].mu[0, :, 0].flip(0))
    factorized = MultipleFullFactorized2d(
        {"a": IN_SHAPE, "b": IN_SHAPE}, {"a": 4, "b": 4}, bias=True, share_features=True, shared_match_ids=ids
    )
    assert factorized["b"]._features is factorized["a"]._features
    torch.testing.assert_close(factorized["b"].features, factorized["a"].features.flip(0))
    assert factorized(x, data_key="b").shape == (B, 4)
    pooled = MultiplePointPooled2d(
        {"a": IN_SHAPE}, {"a": 2}, pool_steps=1, bias=True, pool_kern=2, init_range=0.2
    )
    assert pooled(x).shape == (B, 2)


def test_out_of_range_parameters_give_the_peer_outputs(x):
    """Without in-place clamping we still predict what neuralpredictors predicts for out-of-range parameters."""
    from tests.peer import import_neuralpredictors

    try:
        import_neuralpredictors()
    except ImportError:
        pytest.skip("neuralpredictors is not installed")
    from neuralpredictors.layers import readouts as peer_readouts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = [
            (peer_readouts.Gaussian2d(IN_SHAPE, N, bias=True), Gaussian2d(IN_SHAPE, N, bias=True), "mu"),
            (
                peer_readouts.FullGaussian2d(IN_SHAPE, N, bias=True),
                FullGaussian2d(IN_SHAPE, N, bias=True),
                "_mu",
            ),
            (
                peer_readouts.PointPooled2d(IN_SHAPE, N, 1, True, 2, 0.5),
                PointPooled2d(IN_SHAPE, N, 1, True, 2, 0.5),
                "grid",
            ),
        ]
        for peer, ours, name in pairs:
            with torch.no_grad():
                getattr(peer, name).copy_(torch.linspace(-1.8, 1.8, N * 2).view(1, N, 1, 2))
                if name == "mu":
                    peer.sigma.copy_(torch.linspace(-0.5, 0.5, N * 2).view(1, N, 1, 2))
            ours.load_state_dict(peer.state_dict())
            for mode in ("eval", "train"):
                getattr(peer, mode)()
                getattr(ours, mode)()
                torch.manual_seed(3)
                expected = peer(x, shift=0.1 * torch.ones(B, 2))
                torch.manual_seed(3)
                got = ours(x, shift=0.1 * torch.ones(B, 2))
                torch.testing.assert_close(
                    got, expected, rtol=1e-6, atol=1e-7, msg=f"{type(ours).__name__} {mode}"
                )


def _unfused_factorized(x, spatial, features, normalize, clamp_mask):
    """The readout's formula through plain autograd: materialised normalised mask, then einsum."""
    mask = spatial
    if normalize:
        mask = mask / (mask.pow(2).sum(dim=(1, 2), keepdim=True).sqrt() + 1e-6)
    if clamp_mask:
        mask = mask + (mask.clamp(min=0.0) - mask).detach()  # straight-through, as the readout
    return torch.einsum("bchw,nhw,nc->bn", x, mask, features)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("clamp_mask", [False, True])
def test_fused_factorized_function_gradcheck(normalize, clamp_mask):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    # masks away from 0 so that the clamp's kink is not inside gradcheck's finite differences
    spatial = torch.randn(6, 4, 5, dtype=torch.float64, generator=gen)
    spatial = (spatial + 0.1 * spatial.sign()).requires_grad_()
    features = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)

    def fused(x, spatial, features):
        return factorized_readout(x, spatial, features, normalize=normalize, clamp_mask=clamp_mask)

    # the straight-through clamp is the true derivative only where it does not act: positive masks
    checked = spatial.detach().abs().requires_grad_() if clamp_mask else spatial
    assert torch.autograd.gradcheck(fused, (x, checked, features), eps=1e-6, atol=1e-7)
    # values and gradients equal those of the unfused formula (with the straight-through clamp too)
    out = fused(x, spatial, features)
    expected = _unfused_factorized(x, spatial, features, normalize, clamp_mask)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(out, (x, spatial, features), grad)
    want = torch.autograd.grad(expected, (x, spatial, features), grad)
    for name, a, b in zip(("x", "spatial", "features"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_factorized_function_zero_mask_and_partial_gradients():
    x = torch.randn(2, 3, 4, 5)
    spatial = torch.randn(4, 4, 5)
    spatial[1] = 0.0
    spatial.requires_grad_()
    features = torch.randn(4, 3)  # no gradient wanted for the features or the input
    factorized_readout(x, spatial, features).sum().backward()
    assert torch.isfinite(spatial.grad).all()  # autograd through sqrt(0) would give NaN here
    with torch.no_grad():
        assert factorized_readout(x, spatial, features).shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"normalize": False},
        {"constrain_pos": True},
        {"positive_weights": True, "normalize": False},
        {"shared_features": {"match_ids": np.array([0, 1, 0, 2, 1])}},
    ],
)
def test_factorized_readout_gradients_match_the_unfused_formula(x, kwargs):
    readout = build("factorized", **kwargs).train()
    with torch.no_grad():
        readout.spatial.sub_(0.3 * readout.spatial.abs().mean())  # some negative mask entries
    shift = torch.tensor([[0.0, 0.0], [0.2, -0.1], [-0.3, 0.05]])
    for out_idx, sh in ((None, None), ([4, 1, 2], None), (None, shift)):
        x_in = x.clone().requires_grad_()
        got = readout(x_in, out_idx=out_idx, shift=sh)
        index = readout.resolve_out_idx(out_idx, x.device)
        mapped = x_in if sh is None else shift_feature_map(x_in, sh)
        expected = torch.einsum(
            "bchw,nhw,nc->bn", mapped, readout._effective_mask(index), readout._effective_features(index)
        ) + (readout.bias if index is None else readout.bias[index])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        params = [x_in] + [p for p in readout.parameters()]
        grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(2))
        g_got = torch.autograd.grad(got, params, grad, allow_unused=True)
        g_want = torch.autograd.grad(expected, params, grad, allow_unused=True)
        for a, b in zip(g_got, g_want):
            if b is None:
                assert a is None or torch.all(a == 0)
                continue
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{}, {"normalize": False}, {"constrain_pos": True}, {"constrain_pos": True, "normalize": False}]
)
def test_factorized_l1_matches_the_materialised_mask(kwargs):
    readout = build("factorized", **kwargs)
    with torch.no_grad():
        readout.spatial.sub_(0.3 * readout.spatial.abs().mean())  # some negative mask entries
    got = readout.l1(reduction=None)
    expected = readout.normalized_spatial.reshape(N, -1).abs().sum(1) * readout.features.abs().sum(1)
    torch.testing.assert_close(got, expected)
    params = list(readout.parameters())
    for a, b in zip(
        torch.autograd.grad(got.sum(), params, allow_unused=True),
        torch.autograd.grad(expected.sum(), params, allow_unused=True),
    ):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
