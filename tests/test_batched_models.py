"""The batched training prototype (benchmarks/bench_batched.py): K models in one vmapped step.

The batched step must give every model exactly what its own training step gives it: the same
parameters and batch-norm statistics as K plain Adam steps, one model after another, on the same
batches. The check must notice the bugs batching invites: gradients mixed across models, an
optimiser state shared between them or lost, batch-norm statistics not kept.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from benchmarks.bench_batched import (
    LR,
    StackedModels,
    batched_losses,
    batched_step,
    check_equivalence,
    make_optimizer,
    max_abs_difference,
    sequential_step,
    stack_models,
)
from pipeline.data import make_synthetic_dataset, static_loaders
from pipeline.models.builders import stacked_core_full_gauss_readout
from pipeline.training.loss_scale import loss_scale_trials

TOLERANCE = 1e-5  # float32, three Adam steps: the two paths differ by ~1e-7
STEPS = 3
# a tiny model with every part of the SOTA configuration: depth-separable core with batch norm, full
# Gaussian readout with a cortex grid predictor, Laplace and feature regularizers
CONFIG = dict(
    layers=2,
    hidden_channels=4,
    input_kern=5,
    hidden_kern=3,
    depth_separable=True,
    stack=-1,
    gamma_input=1.0,
    gamma_readout=0.01,
    init_sigma=0.1,
    init_mu_range=0.3,
    core_bias=False,
    grid_mean_predictor={
        "type": "cortex",
        "input_dimensions": 2,
        "hidden_layers": 1,
        "hidden_features": 8,
        "final_tanh": True,
    },
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple:
    """(loaders, data_key, loss scale, three batches) of a tiny synthetic session."""
    folder = tmp_path_factory.mktemp("batched")
    path = make_synthetic_dataset(
        folder / "static90001-1-1-batched",
        n_neurons=20,
        n_train=48,
        n_validation=16,
        n_test_images=4,
        n_repeats=2,
        image_shape=(18, 32),
        seed=0,
    )
    loaders = static_loaders([str(path)], batch_size=16, seed=1, cache_dir=str(folder / "cache"))
    data_key, loader = next(iter(loaders["train"].items()))
    batches = [{"images": b.images, "responses": b.responses} for b in loader][:STEPS]
    return loaders, data_key, {data_key: loss_scale_trials(loader, "all")}, batches


def _models(loaders, seeds=(1, 2, 3)) -> list[torch.nn.Module]:
    return [stacked_core_full_gauss_readout(loaders, seed=seed, **CONFIG).train() for seed in seeds]


def _sequential(models, data_key, scale, batches) -> None:
    """STEPS plain Adam steps of each model, one model after another (sampling off)."""
    for model in models:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        for batch in batches:
            sequential_step(model, optimizer, data_key, batch, scale, sample=False)


def _faulty_batched(
    stacked: StackedModels,
    data_key,
    scale,
    batches,
    after_backward: Callable[[StackedModels], None] = lambda s: None,
    after_step: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] = lambda o: o,
    keep_buffers: bool = True,
) -> None:
    """batched_step's loop with a bug injected at one point (the negative controls)."""
    optimizer = make_optimizer(stacked)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        losses, buffers = batched_losses(stacked, data_key, batch, scale, sample=False)
        losses.sum().backward()
        after_backward(stacked)
        optimizer.step()
        optimizer = after_step(optimizer)
        if keep_buffers:
            stacked.buffers = {name: tensor.detach() for name, tensor in buffers.items()}


def test_batched_step_equals_sequential_steps(data) -> None:
    loaders, data_key, scale, batches = data
    models = _models(loaders)
    initial = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    stacked = stack_models(models)
    optimizer = make_optimizer(stacked)
    for batch in batches:
        losses = batched_step(stacked, optimizer, data_key, batch, scale, sample=False)
        assert losses.shape == (3,)
    _sequential(models, data_key, scale, batches)

    difference = max_abs_difference(stacked, models)
    assert difference["parameters"] < TOLERANCE, difference
    assert difference["buffers"] < TOLERANCE, difference
    # the models trained (and differently: different seeds), so the comparison is not vacuous
    for index, model in enumerate(models):
        state = stacked.model_state(index)
        moved = max(float((model.state_dict()[k] - v).abs().max()) for k, v in initial[index].items())
        assert moved > 1e-3
        assert int(state["core.features.layer0.norm.num_batches_tracked"]) == STEPS
    means = stacked.buffers["core.features.layer0.norm.running_mean"]
    assert not torch.allclose(means[0], means[1])


def test_models_draw_their_own_readout_positions(data) -> None:
    loaders, data_key, scale, batches = data
    stacked = stack_models(_models(loaders, seeds=(1, 1)))  # two identical models
    sampled, _ = batched_losses(stacked, data_key, batches[0], scale)  # training mode: sampling on
    assert not torch.allclose(sampled[0], sampled[1])
    means, _ = batched_losses(stacked, data_key, batches[0], scale, sample=False)
    torch.testing.assert_close(means[0], means[1])


def _mix_gradients(stacked: StackedModels) -> None:
    for tensor in stacked.params.values():
        tensor.grad.copy_(tensor.grad.mean(0, keepdim=True).expand_as(tensor.grad))


def _share_moments(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    for state in optimizer.state.values():
        for name in ("exp_avg", "exp_avg_sq"):
            state[name].copy_(state[name].mean(0, keepdim=True).expand_as(state[name]))
    return optimizer


def _fresh_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return torch.optim.Adam(optimizer.param_groups[0]["params"], lr=LR)


@pytest.mark.parametrize(
    "bug",
    [
        {"after_backward": _mix_gradients},
        {"after_step": _share_moments},
        {"after_step": _fresh_optimizer},
        {"keep_buffers": False},
    ],
    ids=["gradients mixed", "optimiser state shared", "optimiser state lost", "batch-norm stats lost"],
)
def test_the_check_catches_batching_bugs(data, bug) -> None:
    loaders, data_key, scale, batches = data
    models = _models(loaders)
    stacked = stack_models(models)
    _faulty_batched(stacked, data_key, scale, batches, **bug)
    _sequential(models, data_key, scale, batches)
    difference = max_abs_difference(stacked, models)
    assert max(difference.values()) > 100 * TOLERANCE, difference


def test_stack_models_rejects_different_architectures(data) -> None:
    loaders = data[0]
    other = stacked_core_full_gauss_readout(loaders, seed=1, **dict(CONFIG, hidden_channels=5))
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        stack_models([_models(loaders, seeds=(1,))[0], other])
    with pytest.raises(ValueError, match="at least one model"):
        stack_models([])


def test_stacking_copies(data) -> None:
    loaders, data_key, scale, batches = data
    (model,) = _models(loaders, seeds=(1,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stacked = stack_models([model])
    batched_step(stacked, make_optimizer(stacked), data_key, batches[0], scale)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_check_equivalence_in_float64(data) -> None:
    loaders, data_key, scale, batches = data
    models = _models(loaders)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    difference = check_equivalence(models, data_key, batches, scale)
    assert max(difference.values()) < 1e-10, difference
    for model, state in zip(models, before, strict=True):  # the models themselves are left alone
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
