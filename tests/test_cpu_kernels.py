"""The fused CPU kernels (pipeline.kernels) against PyTorch's own operations.

Each comparison runs the same inputs through the kernel and through ``F.conv2d`` / ``F.grid_sample``
and compares outputs and every gradient; a wrong index, a missed border, a dropped slice of the
batch or a mixed-up gradient breaks them. The model-level test trains the SOTA-shaped model a few
steps with the kernels on and off from the same weights and batches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline import kernels
from pipeline.models.cores import DepthSeparableConv2d, DepthwiseConv2d


@pytest.fixture
def built():
    """Skip where the kernels cannot be built (no C compiler); built inside the test session's cache."""
    if not kernels.kernels_enabled():
        pytest.skip(f"CPU kernels not built: {kernels.kernel_status().get('reason')}")


needs_kernels = pytest.mark.usefixtures("built")


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-5) -> None:
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= rel * scale, (
        f"max diff {float((a - b).abs().max()):.3g} vs scale {scale:.3g}"
    )


@needs_kernels
@pytest.mark.parametrize(
    "batch, channels, size, kernel, padding, dilation, channels_last, bias",
    [
        (5, 64, (13, 17), 7, 3, 1, True, False),  # the SOTA shape, uneven batch split over threads
        (3, 20, (9, 11), 3, 1, 1, False, True),  # channels not a multiple of 16, contiguous input
        (2, 16, (12, 10), 5, 0, 2, True, True),  # no padding, dilation 2
        (1, 33, (8, 8), 7, 3, 1, True, False),  # one image, remainder channels
    ],
)
def test_depthwise_conv_matches_conv2d(batch, channels, size, kernel, padding, dilation, channels_last, bias):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, *size).contiguous(memory_format=fmt)
    weight = torch.randn(channels, 1, kernel, kernel)
    b = torch.randn(channels) if bias else None
    grad_out = None
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        wi = weight.clone().requires_grad_()
        bi = b.clone().requires_grad_() if bias else None
        if fused:
            y = kernels.depthwise_conv2d(xi, wi, bi, (padding, padding), (dilation, dilation))
            assert type(y.grad_fn).__name__ == "_DepthwiseConv2dBackward"
        else:
            y = F.conv2d(xi, wi, bi, 1, padding, dilation, channels)
        if grad_out is None:
            grad_out = torch.randn_like(y)
        y.backward(grad_out)
        results.append((y.detach(), xi.grad, wi.grad, bi.grad if bias else None))
    fused, reference = results
    for a, r in zip(fused, reference):
        if r is not None:
            _close(a, r)


@needs_kernels
def test_depthwise_module_uses_kernel_only_when_it_trains():
    torch.manual_seed(0)
    conv = DepthwiseConv2d(8, 3, padding=1, bias=False)
    x = torch.randn(2, 8, 6, 6)
    assert type(conv(x).grad_fn).__name__ == "_DepthwiseConv2dBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    conv.weight.requires_grad_(False)  # a frozen core: nothing to gain, the plain convolution
    assert type(conv(x.requires_grad_()).grad_fn).__name__ != "_DepthwiseConv2dBackward"


def test_depth_separable_layout_is_the_peers():
    block = DepthSeparableConv2d(4, 6, 7, padding=3, bias=False)
    assert list(block.state_dict()) == [
        "in_depth_conv.weight",
        "spatial_conv.weight",
        "out_depth_conv.weight",
    ]
    assert block.spatial_conv.weight.shape == (6, 1, 7, 7)
    assert repr(block.spatial_conv).startswith("Conv2d(6, 6, kernel_size=(7, 7)")


def _reference_readout(x, grid, features):
    return (F.grid_sample(x, grid, align_corners=True).squeeze(-1) * features).sum(1)


@needs_kernels
@pytest.mark.parametrize("channels", [64, 20])
def test_readout_matches_grid_sample_everywhere(channels):
    torch.manual_seed(1)
    batch, neurons, height, width = 5, 37, 9, 13
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
    grid = torch.rand(batch, neurons, 1, 2) * 2.6 - 1.3  # inside, near and beyond the borders
    grid[0, :4, 0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0 - 2 / (width - 1), 0.3]])
    features = torch.randn(1, channels, neurons)
    grad_out = torch.randn(batch, neurons)
    results = []
    for fn in (kernels.sample_and_weight, _reference_readout):
        xi, gi, fi = (t.clone().requires_grad_() for t in (x, grid, features))
        y = fn(xi, gi, fi)
        y.backward(grad_out)
        results.append((y.detach(), xi.grad, gi.grad, fi.grad))
    with torch.enable_grad():
        fused_fn = kernels.sample_and_weight(x.requires_grad_(), grid, features).grad_fn
    assert type(fused_fn).__name__ == "_SampleAndWeightBackward"
    for a, r in zip(*results):
        _close(a, r)


@needs_kernels
def test_readout_gradient_only_where_asked_and_expanded_grid():
    torch.manual_seed(2)
    x = torch.randn(3, 16, 7, 9)
    grid = (torch.rand(1, 11, 1, 2) * 2 - 1).expand(3, 11, 1, 2)  # the eval path's expanded grid
    features = torch.randn(1, 16, 11)
    xi = x.clone().requires_grad_()  # an MEI: the gradient with respect to the input only
    kernels.sample_and_weight(xi, grid, features).sum().backward()
    xr = x.clone().requires_grad_()
    _reference_readout(xr, grid.contiguous(), features).sum().backward()
    _close(xi.grad, xr.grad)
    with torch.inference_mode():
        _close(
            kernels.sample_and_weight(x, grid, features), _reference_readout(x, grid.contiguous(), features)
        )


@needs_kernels
def test_kernels_step_aside_under_torch_func():
    torch.manual_seed(3)
    x, grid, features = torch.randn(2, 8, 5, 5), torch.rand(2, 4, 1, 2) * 2 - 1, torch.randn(1, 8, 4)
    grad = torch.func.grad(lambda f: kernels.sample_and_weight(x, grid, f).sum())(features)
    fr = features.clone().requires_grad_()
    _reference_readout(x, grid, fr).sum().backward()
    _close(grad, fr.grad)


def test_switch_off_and_missing_compiler(monkeypatch, tmp_path):
    x, grid, features = torch.randn(2, 8, 5, 5), torch.rand(2, 4, 1, 2) * 2 - 1, torch.randn(1, 8, 4)
    monkeypatch.setenv("SYSID_CPU_KERNELS", "0")
    assert kernels.kernel_status()["state"] == "off"
    assert not kernels.kernels_enabled()
    _close(kernels.sample_and_weight(x, grid, features), _reference_readout(x, grid, features))
    monkeypatch.delenv("SYSID_CPU_KERNELS")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SYSID_CACHE_DIR", str(tmp_path))
    kernels._library.cache_clear()
    try:
        assert not kernels.kernels_enabled()
        status = kernels.kernel_status()
        assert status["state"] == "unavailable" and "no-such-compiler" in status["reason"]
        xi = x.clone().requires_grad_()
        y = kernels.depthwise_conv2d(xi, torch.randn(8, 1, 3, 3), padding=(1, 1))
        assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    finally:
        kernels._library.cache_clear()


@needs_kernels
def test_training_steps_agree_with_kernels_off(monkeypatch, synthetic_loaders):
    """The SOTA-shaped core + Gaussian readout: the first step's gradients, then 4 SGD steps
    (Adam would magnify float rounding in near-zero gradients) from the same weights and batches."""
    from pipeline.models.builders import stacked_core_full_gauss_readout

    loaders = synthetic_loaders
    config = dict(
        layers=3, input_kern=5, hidden_kern=7, hidden_channels=16, depth_separable=True, core_bias=False,
        gamma_input=1.0, gamma_readout=0.01, init_sigma=0.1, init_mu_range=0.3, gauss_type="full",
        grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
                             "hidden_features": 8, "final_tanh": True},
    )  # fmt: skip
    key = next(iter(loaders["train"]))
    batches = list(loaders["train"][key])[:4]  # once: the loader reshuffles on every pass
    runs = []
    for setting in ("1", "0"):
        monkeypatch.setenv("SYSID_CPU_KERNELS", setting)
        model = stacked_core_full_gauss_readout(loaders, seed=7, **config)
        model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        torch.manual_seed(11)  # the readout's position noise: the same draws on both runs
        losses, first_grads = [], None
        for batch in batches:
            out = model(batch[0], data_key=key)
            loss = F.poisson_nll_loss(out, batch[1], log_input=False) + model.regularizer(data_key=key)
            optimizer.zero_grad()
            loss.backward()
            if first_grads is None:
                first_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            optimizer.step()
            losses.append(float(loss.detach()))
        runs.append((losses, first_grads, model.state_dict()))
    (fused_losses, fused_grads, fused_state), (plain_losses, plain_grads, plain_state) = runs
    assert set(fused_grads) == set(plain_grads) and any("spatial_conv" in n for n in plain_grads)
    for name, grad in plain_grads.items():
        _close(fused_grads[name], grad, rel=1e-4)
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    for name, value in plain_state.items():
        if value.is_floating_point():
            _close(fused_state[name], value, rel=1e-4)


@needs_kernels
def test_kernels_step_aside_under_cpu_autocast():
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    weight = torch.randn(8, 1, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.depthwise_conv2d(x, weight, padding=(1, 1))
        z = kernels.sample_and_weight(y.float(), torch.zeros(2, 3, 1, 2), torch.ones(1, 8, 3))
    assert type(y.grad_fn).__name__ != "_DepthwiseConv2dBackward"
    assert type(z.grad_fn).__name__ != "_SampleAndWeightBackward"
    z.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
