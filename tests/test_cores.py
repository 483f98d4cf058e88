"""Tests of the convolutional core, its building blocks and the core regularizers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pipeline.models.activations import AdaptiveELU, adaptive_elu
from pipeline.models.cores import DepthSeparableConv2d, Stacked2dCore
from pipeline.models.regularizers import Laplace, LaplaceL2, LaplaceL2norm, group_sparsity


def small_core(**kwargs) -> Stacked2dCore:
    config = dict(input_channels=2, hidden_channels=4, input_kern=5, hidden_kern=3, layers=3)
    config.update(kwargs)
    return Stacked2dCore(**config)


def test_sensorium_core_parameter_count_and_state_dict_names():
    # COMPAT §1: the tutorial core has 40,256 parameters (depth-separable convs with bias)
    core = Stacked2dCore(
        input_channels=1,
        input_kern=9,
        hidden_kern=7,
        hidden_channels=64,
        layers=4,
        depth_separable=True,
        stack=-1,
        gamma_input=6.3831,
    )
    assert sum(p.numel() for p in core.parameters()) == 40_256
    assert core.output_shape((32, 1, 144, 256)) == (32, 64, 144, 256)

    # COMPAT §2: the Sensorium 2022 checkpoint layout (no conv biases)
    sota = Stacked2dCore(
        input_channels=1,
        input_kern=9,
        hidden_kern=7,
        hidden_channels=64,
        layers=4,
        depth_separable=True,
        stack=-1,
        bias=False,
        pad_input=False,
        laplace_padding=None,
        input_regularizer="LaplaceL2norm",
        use_avg_reg=False,
    )
    shapes = {k: tuple(v.shape) for k, v in sota.state_dict().items()}
    expected = {
        "_input_weights_regularizer.laplace.filter": (1, 1, 3, 3),
        "features.layer0.conv.weight": (64, 1, 9, 9),
    }
    for layer in range(4):
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"features.layer{layer}.norm.{name}"] = (64,)
        expected[f"features.layer{layer}.norm.num_batches_tracked"] = ()
    for layer in (1, 2, 3):
        expected[f"features.layer{layer}.ds_conv.in_depth_conv.weight"] = (64, 64, 1, 1)
        expected[f"features.layer{layer}.ds_conv.spatial_conv.weight"] = (64, 1, 7, 7)
        expected[f"features.layer{layer}.ds_conv.out_depth_conv.weight"] = (64, 64, 1, 1)
    assert shapes == expected
    laplace = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    assert torch.equal(sota.state_dict()["_input_weights_regularizer.laplace.filter"][0, 0], laplace)
    assert sota.features.layer1.ds_conv.spatial_conv.groups == 64
    assert sota.features.layer1.ds_conv.spatial_conv.padding == (3, 3)


def test_construction_emits_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_core(depth_separable=True, gamma_hidden=1.0, use_avg_reg=True)


@pytest.mark.parametrize(
    ("stack", "n_stacked"),
    [(None, 3), (-1, 1), (-2, 2), (1, 2), (0, 3), ([0, 2], 2)],
)
def test_outchannels_follow_stack(stack, n_stacked):
    core = small_core(stack=stack).eval()
    out = core(torch.randn(2, 2, 9, 11))
    assert core.outchannels == n_stacked * 4 == out.shape[1]
    assert core.output_shape((2, 9, 11)) == tuple(out.shape[1:])


def test_stack_selects_the_right_layers():
    full = small_core(stack=None).eval()
    last = small_core(stack=-1).eval()
    last.load_state_dict(full.state_dict())
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(full(x)[:, -4:], last(x))


def test_output_shape_matches_forward_without_padding():
    core = small_core(pad_input=False, hidden_padding=0, hidden_dilation=2, layers=2, stack=-1).eval()
    out = core(torch.randn(1, 2, 20, 17))
    assert tuple(out.shape) == core.output_shape((1, 2, 20, 17)) == (1, 4, 12, 9)
    mixed = small_core(pad_input=False, hidden_padding=0, layers=2)
    with pytest.raises(ValueError, match="different spatial sizes"):
        mixed(torch.randn(1, 2, 20, 17))
    with pytest.raises(ValueError, match="different spatial sizes"):
        mixed.output_shape((2, 20, 17))


def test_skip_feeds_concatenated_previous_outputs():
    core = small_core(skip=2, layers=4).eval()
    assert core.features.layer1.conv.in_channels == 4
    assert core.features.layer2.conv.in_channels == 8
    assert core.features.layer3.conv.in_channels == 8
    inputs, outputs = {}, {}

    def record(index):
        def hook(module, args, out):
            inputs[index], outputs[index] = args[0], out

        return hook

    for i, layer in enumerate(core.features):
        layer.register_forward_hook(record(i))
    core(torch.randn(2, 2, 7, 7))
    assert torch.equal(inputs[1], outputs[0])
    assert torch.equal(inputs[2], torch.cat([outputs[0], outputs[1]], dim=1))
    assert torch.equal(inputs[3], torch.cat([outputs[1], outputs[2]], dim=1))


def test_nonlinearities_and_linear_core():
    core = small_core(final_nonlinearity=False)
    assert isinstance(core.features.layer0.nonlin, AdaptiveELU)
    assert not hasattr(core.features.layer2, "nonlin")
    linear = small_core(linear=True)
    assert not any(isinstance(m, AdaptiveELU) for m in linear.modules())
    shifted = small_core(elu_shift=(1.0, 2.0))
    assert (shifted.features.layer0.nonlin.xshift, shifted.features.layer0.nonlin.yshift) == (1.0, 2.0)


def test_batchnorm_bias_and_scale_variants():
    bias_only = small_core(independent_bn_bias=False, batch_norm_scale=False)
    keys = set(bias_only.state_dict())
    assert "features.layer0.bias.bias" in keys and "features.layer0.norm.weight" not in keys
    scale_only = small_core(independent_bn_bias=False, bias=False)
    keys = set(scale_only.state_dict())
    assert "features.layer1.scale.scale" in keys and "features.layer1.norm.weight" not in keys
    assert "features.layer1.conv.bias" not in keys
    final_unscaled = small_core(independent_bn_bias=False, final_batchnorm_scale=False)
    assert "features.layer2.bias.bias" in final_unscaled.state_dict()
    assert "features.layer1.norm.weight" in final_unscaled.state_dict()
    no_bn = small_core(batch_norm=False)
    assert "features.layer0.conv.bias" in no_bn.state_dict()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())


def test_initialisation_xavier_normal_zero_bias():
    torch.manual_seed(0)
    core = small_core(batch_norm=False, hidden_channels=32, hidden_kern=5)
    conv = core.features.layer1.conv
    assert torch.count_nonzero(conv.bias) == 0
    fan_in, fan_out = 32 * 25, 32 * 25
    expected_std = (2.0 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


def test_laplace_regularizer_values():
    delta = torch.zeros(1, 1, 3, 3)
    delta[0, 0, 1, 1] = 1.0
    # "same" padding: the filtered delta is the Laplace kernel itself, squared sum 16 + 4 * 1
    assert LaplaceL2(padding=None)(delta, avg=False).item() == pytest.approx(10.0)
    assert LaplaceL2(padding=None)(delta, avg=True).item() == pytest.approx(10.0 / 9)
    assert LaplaceL2norm(padding=None)(delta).item() == pytest.approx(20.0)
    # no padding: only the centre pixel remains, 4 ** 2 / 2
    assert LaplaceL2(padding=0)(delta, avg=False).item() == pytest.approx(8.0)
    assert Laplace(padding=0)(torch.ones(2, 1, 5, 5)).abs().max() == 0  # constant filters are smooth
    with pytest.raises(ValueError, match="input_regularizer"):
        small_core(input_regularizer="Nope")


def test_core_regularizer_combines_laplace_and_group_sparsity():
    core = small_core(gamma_input=2.0, gamma_hidden=3.0, laplace_padding=None, use_avg_reg=False)
    with torch.no_grad():
        core.features.layer0.conv.weight.zero_()
        core.features.layer0.conv.weight[:, :, 2, 2] = 1.0  # 8 delta filters
        for layer in (core.features.layer1, core.features.layer2):
            layer.conv.weight.fill_(1.0)  # every 3x3 filter has L2 norm 3
    assert core.laplace().item() == pytest.approx(8 * 10.0)
    assert core.group_sparsity().item() == pytest.approx(3.0)
    assert core.regularizer().item() == pytest.approx(2.0 * 80.0 + 3.0 * 3.0)
    assert group_sparsity(torch.ones(2, 2, 3, 3)).item() == pytest.approx(3.0)


def test_regularizer_is_positive_and_differentiable():
    core = small_core(gamma_input=1.0, gamma_hidden=1.0)
    reg = core.regularizer()
    assert reg.item() > 0
    reg.backward()
    assert core.features.layer0.conv.weight.grad.abs().sum() > 0
    assert core.features.layer1.conv.weight.grad.abs().sum() > 0
    separable = small_core(depth_separable=True, gamma_hidden=5.0, gamma_input=0.0)
    assert separable.group_sparsity().item() == 0.0


def test_depth_separable_conv_structure():
    conv = DepthSeparableConv2d(3, 6, 5, padding=2, bias=False)
    assert [name for name, _ in conv.named_children()] == ["in_depth_conv", "spatial_conv", "out_depth_conv"]
    assert conv(torch.randn(1, 3, 8, 8)).shape == (1, 6, 8, 8)
    assert sum(p.numel() for p in conv.parameters()) == 3 * 6 + 6 * 25 + 6 * 6


def test_core_gradients_reach_every_parameter():
    core = small_core(depth_separable=True, skip=2)
    core(torch.randn(3, 2, 8, 8)).square().mean().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(attention_conv=True), NotImplementedError, "attention_conv"),
        (dict(attention_conv=True, depth_separable=True), ValueError, "cannot both"),
        (dict(stack=5), ValueError, "selects no layer"),
        (dict(stack=[0, 7]), ValueError, "outside"),
        (dict(hidden_kern=[3]), ValueError, "hidden_kern"),
        (dict(layers=0), ValueError, "layers"),
        (dict(elu_shift=(1.0,)), ValueError, "elu_shift"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        small_core(**kwargs)


def test_bad_input_shape_raises():
    core = small_core()
    with pytest.raises(ValueError, match="2 input channels"):
        core(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        core(torch.randn(2, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        small_core(pad_input=False, input_kern=9).output_shape((2, 5, 5))


@pytest.mark.parametrize("xshift, yshift", [(0.0, 0.0), (0.5, 0.0), (0.0, 1.0), (0.3, -0.7)])
def test_adaptive_elu_values_gradients_and_no_input_mutation(xshift, yshift):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    before = x.detach().clone()
    assert torch.autograd.gradcheck(lambda t: adaptive_elu(t, xshift, yshift), (x,))
    out = adaptive_elu(x, xshift, yshift)
    expected = nn.functional.elu(x - xshift) + yshift
    assert torch.equal(out, expected)
    assert torch.equal(x, before)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0]
    )
    # inside a network: the output of a layer whose backward needs it (sigmoid) is not modified
    hidden = torch.sigmoid(x)
    saved = hidden.detach().clone()
    out = AdaptiveELU(xshift, yshift)(hidden)
    assert torch.equal(hidden, saved)
    out.sum().backward()  # raises if a tensor saved for backward was modified in place
