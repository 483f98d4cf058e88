"""MEI optimisation on models whose optimum is known in closed form (fast; no training).

An LN model ``softplus(<w_n, x> + b_n)`` under a fixed image norm is maximised by ``norm * w_n / |w_n|``
and minimised by its negative, so every constraint and option can be checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.mei import (
    MEIConfig,
    MEIConfigError,
    data_reference,
    mei_config,
    optimize_meis,
    validate_method,
)
from pipeline.mei.transforms import gaussian_blur, per_image_shift, project

SHAPE = (1, 10, 14)


class LinearNonlinear(nn.Module):
    """softplus(<w_n, x> + b) for N neurons with smooth random filters; optional batch norm on the input."""

    def __init__(self, n: int = 6, batch_norm: bool = False, seed: int = 0, linear: bool = False):
        super().__init__()
        self.linear = linear
        g = torch.Generator().manual_seed(seed)
        w = gaussian_blur(torch.randn(n, *SHAPE, generator=g), 1.0)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(torch.randn(n, generator=g) * 0.1)
        self.norm = nn.BatchNorm2d(1) if batch_norm else None
        self.calls: list[int] = []

    def forward(self, x, data_key=None, **kwargs):
        self.calls.append(len(x))
        if self.norm is not None:
            x = self.norm(x)
        drive = x.flatten(1) @ self.weight.flatten(1).T + self.bias
        return drive if self.linear else F.softplus(drive)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


FAST = dict(norm=3.0, pixel_range=None, blur_sigma=0.0, lr=0.5, max_steps=300, min_steps=5, patience=10)


def test_the_mei_of_an_ln_neuron_is_its_filter_at_the_fixed_norm() -> None:
    model = LinearNonlinear()
    neurons = [4, 0, 2]
    result = optimize_meis(model, None, neurons, SHAPE, FAST, seed=0)
    w = model.weight.detach()[neurons]
    assert result.images.shape == (3, *SHAPE)
    assert (cosine(result.images, w) > 0.999).all()
    torch.testing.assert_close(result.norms, torch.full((3,), 3.0), rtol=1e-4, atol=0)
    optimum = F.softplus(3.0 * w.flatten(1).norm(dim=1) + model.bias.detach()[neurons])
    torch.testing.assert_close(result.activations, optimum, rtol=1e-3, atol=0)
    assert result.neurons.tolist() == neurons
    assert result.converged.all() and (result.steps < 300).all()
    # the trace is the objective per step, rising to the final activation
    assert result.trace.shape == (int(result.steps.max()), 3)
    last = result.trace[result.steps - 1, torch.arange(3)]
    torch.testing.assert_close(last, result.activations, rtol=1e-3, atol=0)
    assert (result.trace[0] < last).all()


def test_inhibit_gives_the_negative_filter() -> None:
    # a linear neuron: a softplus saturates at 0, where many images are (nearly) equally inhibitory
    model = LinearNonlinear(linear=True)
    result = optimize_meis(model, None, [1, 3], SHAPE, {**FAST, "objective": "inhibit"}, seed=0)
    w = model.weight.detach()[[1, 3]]
    assert (cosine(result.images, w) < -0.999).all()
    optimum = -3.0 * w.flatten(1).norm(dim=1) + model.bias.detach()[[1, 3]]
    torch.testing.assert_close(result.activations, optimum, rtol=1e-3, atol=0)
    # the trace holds the objective (minus the response), which rises
    last = result.trace[result.steps - 1, torch.arange(2)]
    torch.testing.assert_close(last, -result.activations, rtol=1e-3, atol=0)
    assert (result.trace[0] < last).all()


def test_batched_equals_one_by_one_and_chunks_do_not_matter() -> None:
    # batch norm in the model: optimising in train mode would couple the images of a batch
    model = LinearNonlinear(batch_norm=True).train()
    with torch.no_grad():
        model.norm.running_mean.fill_(0.2)
        model.norm.running_var.fill_(1.5)
    config = {**FAST, "blur_sigma": 1.0, "jitter": 2, "max_steps": 40, "min_steps": 40}
    neurons = [5, 1, 3, 1]
    batched = optimize_meis(model, None, neurons, SHAPE, config, seed=7)
    assert model.training  # restored
    assert max(model.calls[1:-1]) == 4  # one forward pass for all four images per step
    single = [optimize_meis(model, None, [n], SHAPE, config, seed=7) for n in neurons]
    chunked = optimize_meis(model, None, neurons, SHAPE, config, seed=7, batch_size=3)
    for i, one in enumerate(single):
        torch.testing.assert_close(batched.images[i], one.images[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.images, batched.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.trace, batched.trace, atol=1e-4, rtol=1e-5, equal_nan=True)
    # a repeated neuron gets the same image (its start depends on (seed, neuron) only)
    torch.testing.assert_close(batched.images[1], batched.images[3])


def test_the_seed_fixes_the_initial_noise() -> None:
    model = LinearNonlinear()
    config = {**FAST, "max_steps": 1, "min_steps": 0, "lr": 1e-6}
    a = optimize_meis(model, None, [0, 1], SHAPE, config, seed=3)
    b = optimize_meis(model, None, [0, 1], SHAPE, config, seed=3)
    c = optimize_meis(model, None, [0, 1], SHAPE, config, seed=4)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert (cosine(a.images, c.images).abs() < 0.5).all()


def test_pixel_range_and_norm_bound_are_respected() -> None:
    model = LinearNonlinear()
    config = {**FAST, "norm": 4.0, "pixel_range": "data"}
    result = optimize_meis(model, None, [0, 1, 2], SHAPE, config, seed=0, data_range=(-0.5, 0.6))
    assert result.images.min() >= -0.5 and result.images.max() <= 0.6
    assert (result.images.min() == -0.5) or (result.images.max() == 0.6)  # the range binds here
    torch.testing.assert_close(result.norms, torch.full((3,), 4.0), rtol=2e-3, atol=0)
    # bound mode: the norm may end below the bound, never above
    bounded = optimize_meis(model, None, [0, 1], SHAPE, {**FAST, "norm_mode": "bound", "norm": 2.0}, seed=0)
    assert (bounded.norms <= 2.0 + 1e-5).all()
    assert (bounded.norms > 1.9).all()  # a monotone neuron pushes against the bound
    ranged = optimize_meis(model, None, [0], SHAPE, {**FAST, "pixel_range": [-0.3, 0.2], "norm": 2.0}, seed=0)
    assert ranged.images.min() >= -0.3 and ranged.images.max() <= 0.2


def test_the_step_budget_stops_an_optimisation_that_has_not_converged() -> None:
    result = optimize_meis(
        LinearNonlinear(), None, [0, 1], SHAPE, {**FAST, "lr": 1e-4, "max_steps": 7, "min_steps": 0}, seed=0
    )
    assert result.steps.tolist() == [7, 7]
    assert not result.converged.any()
    assert result.trace.shape == (7, 2)


def test_bad_inputs_get_clear_errors() -> None:
    model = LinearNonlinear()
    with pytest.raises(MEIConfigError, match="learning_rate"):
        optimize_meis(model, None, [0], SHAPE, {"learning_rate": 1.0})
    with pytest.raises(ValueError, match="data_range"):
        optimize_meis(model, None, [0], SHAPE, {"pixel_range": "data"})
    with pytest.raises(ValueError, match="cannot be reached"):
        optimize_meis(model, None, [0], SHAPE, {"norm": 100.0, "pixel_range": [-1, 1]})
    with pytest.raises(ValueError, match="out of range: session None has 6 neurons"):
        optimize_meis(model, None, [6], SHAPE, FAST)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        optimize_meis(model, None, [], SHAPE, FAST)
    with pytest.raises(ValueError, match="input_shape"):
        optimize_meis(model, None, [0], (10, 14), FAST)
    with pytest.raises(ValueError, match="seed"):
        optimize_meis(model, None, [0], SHAPE, FAST, seed=-1)


def test_the_config_refuses_unknown_keys_and_bad_values() -> None:
    assert mei_config(None) == MEIConfig()
    assert mei_config({"jitter": 2}).jitter == 2
    assert mei_config({"max_steps": 10}).min_steps == 10  # a small budget lowers the default minimum
    # a stored JSON config (lists for tuples) validates to the same settings
    stored = mei_config(MEIConfig(pixel_range=(-1.0, 2.0)).model_dump(mode="json"))
    assert stored == MEIConfig(pixel_range=(-1.0, 2.0))
    for bad, words in (
        ({"steps": 10}, "steps"),
        ({"norm": -1}, "norm"),
        ({"objective": "maximise"}, "objective"),
        ({"pixel_range": [1, 0]}, "low < high"),
        ({"min_steps": 20, "max_steps": 10}, "min_steps"),
        ({"jitter": 1.5}, "jitter"),
    ):
        with pytest.raises(MEIConfigError, match=words):
            mei_config(bad)
    with pytest.raises(MEIConfigError, match="mapping"):
        mei_config([("norm", 1.0)])


# ------------------------------------------------------------------------------------------ transforms
def test_per_image_shift_rolls_each_image_by_its_own_offset() -> None:
    x = torch.randn(3, 2, 5, 7)
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 4]])
    out = per_image_shift(x, shifts)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i], torch.roll(x[i], shifts=(dy, dx), dims=(1, 2)))


def test_gaussian_blur_matches_a_direct_convolution_inside_and_keeps_constants() -> None:
    x = torch.randn(2, 1, 21, 25)
    sigma = 1.5
    radius = 5
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    direct = F.conv2d(x, (kernel / kernel.sum())[None, None])
    torch.testing.assert_close(
        gaussian_blur(x, sigma)[..., radius:-radius, radius:-radius], direct, atol=1e-5, rtol=0
    )
    constant = torch.full((1, 1, 6, 6), 2.5)
    torch.testing.assert_close(gaussian_blur(constant, 3.0), constant)
    assert gaussian_blur(x, 0.0) is x


def test_project_reaches_the_norm_inside_the_range() -> None:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    out = project(x, 5.0, True, (-1.0, 1.0))
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.full((4,), 5.0), rtol=1e-3, atol=0)
    assert not torch.equal(out, x)  # x itself is untouched
    np.testing.assert_allclose(project(x, None, True, None).numpy(), x.numpy())
    # nearly every pixel clipped (norm close to the largest reachable, 8): still on the sphere, in range
    tight = project(x, 7.9, True, (-1.0, 1.0))
    torch.testing.assert_close(tight.flatten(1).norm(dim=1), torch.full((4,), 7.9), rtol=1e-3, atol=0)
    assert tight.abs().max() <= 1
    # bound mode: only shrinks
    small = x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(project(small, 5.0, False, None), small)


def test_data_reference_reads_shape_range_and_mean_responses() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(10, *SHAPE, generator=g)
    responses = torch.rand(10, 4, generator=g)
    batches = [(images[:6], responses[:6]), {"images": images[6:], "responses": responses[6:]}]
    reference = data_reference(batches)
    assert reference.input_shape == SHAPE
    assert reference.pixel_range == (float(images.min()), float(images.max()))
    np.testing.assert_allclose(reference.mean_response, responses.double().mean(0).numpy())
    assert reference.n_trials == 10
    with pytest.raises(ValueError, match="no batches"):
        data_reference([])
    with pytest.raises(ValueError, match="shape changes"):
        data_reference([(images[:2], responses[:2]), (images[:2, :, :5], responses[:2])])


def test_a_method_is_validated_by_the_settings_of_its_own_function() -> None:
    function, config = validate_method("pipeline.mei.optimize_meis", {"norm": 5.0, "jitter": 1})
    assert function is optimize_meis and config == MEIConfig(norm=5.0, jitter=1)
    assert validate_method(optimize_meis, None)[1] == MEIConfig()
    with pytest.raises(MEIConfigError, match="nrom"):
        validate_method("pipeline.mei.optimize_meis", {"nrom": 5.0})
    with pytest.raises(ValueError, match="not an MEI method"):
        validate_method("pipeline.mei.data_reference", {})
    with pytest.raises(ValueError, match="no_such_fn"):
        validate_method("pipeline.mei.no_such_fn", {})
