"""Several models of one configuration trained in one process as one batched computation.

A prototype for issue 15 ("beyond one model per process"): the K seeds of one configuration share
every shape, so their parameters can be stacked along a new leading axis and a training step of all
K models run as one computation, instead of K small ones that leave a GPU mostly idle.

The batched path: :func:`stack_models` stacks the K models' parameters and buffers
(``torch.func.stack_module_state``); :func:`batched_losses` runs the trainer's own objective
(:class:`pipeline.training.loss.BatchLoss`: the Poisson loss × sqrt(n_trials / batch size) + the core
and readout regularizers) of every model on the same batch under ``torch.func.vmap`` over
``torch.func.functional_call``; :func:`batched_step` back-propagates the sum of the K losses (the
models share no parameter, so each one gets exactly its own gradient) and takes one step of one Adam
over the stacked parameters. Adam is elementwise, so the moments of a stacked tensor are the K
models' own moments side by side and each model follows its own Adam exactly (the step count is
shared, and it is the same for all). The sequential path (:func:`sequential_step`) trains the same
K models one after another with one plain Adam each, on the same batches.

Randomness: ``vmap(..., randomness="different")``, so each model draws its own readout positions
(the Gaussian readout samples them in training mode), as K separate runs do.

Batch norm: the core's batch-norm layers in training mode update their running statistics in
place. The buffers are passed to ``vmap`` as batched inputs like the parameters; inside, each model
gets a clone of its buffers, the forward pass updates the clone, and the clone is returned as an
output of the vmapped function and becomes the stacked buffer (detached) after the step. So every
model normalises with its own batch statistics and keeps its own running statistics, with the same
momentum as alone; nothing depends on in-place writes crossing the ``vmap`` boundary.
``torch.func.replace_all_batch_norm_modules_`` is not used: it stops tracking running statistics,
which changes what the models do in evaluation.

Equivalence check: K models are built with different seeds; float64 copies of them take
``--check-steps`` steps through both paths from the same weights, on the same batches (their first
``--check-batch-size`` trials: float64 is slow on the CPU), with the readout's sampling turned off
(``sample=False``: the mean positions, as in evaluation; the two paths draw their noise in a
different order, so with sampling on they would see different positions). Printed: the largest
absolute difference between their parameters, and between their batch-norm statistics. Float64
because Adam's first steps move every element by about ±lr whatever the size of its gradient: in
float32 an element whose gradient is at rounding level (the paths sum in different orders) can step
either way, a difference of ~lr that says nothing about the batching.

Timing: then the float32 models train through both paths from the same initial weights with
sampling on, as in training: one untimed warm-up step, then ``--steps`` steps per model. On the CPU
the paths take turns step by step and the median step counts; on CUDA each path's loop is timed
whole (see ``_seconds_per_step``); the order does not change what any model computes. Printed per
configuration and K: seconds per step (the batched path: one step of all K models; the sequential
path: K steps, one per model), model-steps per second of both, their ratio (batched / sequential;
above 1: batching wins) and the peak GPU memory of each path on CUDA.

Usage: ``python benchmarks/bench_batched.py [--config small sota] [--models 2 4] [--steps 10]
[--check-steps 3] [--batch-size 128] [--check-batch-size 32] [--threads 2] [--device cpu|cuda]``.
Data: the real subset when present (its train tier), else a synthetic session of the same size
(``bench_gpu.dataset_path``). ``--device cuda`` without a CUDA device prints that it skipped and
exits 0; a failed check (a difference above ``CHECK_TOLERANCE``) exits 1 after the table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.training.loss import BatchLoss  # noqa: E402

LR = 0.009  # the benchmarks' trainer learning rate (TRAINER["lr_init"] in bench_throughput.py)
CHECK_TOLERANCE = 1e-9  # float64: the two paths agree to ~1e-14 after three steps
Batch = Mapping[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# the objective of one model
# ----------------------------------------------------------------------------------------------------


class Objective(nn.Module):
    """A model and the trainer's batch objective, as one module whose forward returns the loss.

    ``functional_call`` swaps the parameters and buffers of the module it calls only while its forward
    runs; the objective needs them in the regularizers too, so the model is a submodule (its state
    names get the prefix ``"model."``) and the whole :class:`BatchLoss` runs inside ``forward``.

    Args:
        model: e.g. a ``FiringRateEncoder``.
        scale_trials: ``{data_key: n_trials}`` of the loss scale (as the trainer computes it).
        device: where the batches are.
        sample: passed to the readout (``False``: mean positions; ``None``: sample in training mode).
    """

    def __init__(
        self,
        model: nn.Module,
        scale_trials: Mapping[str, int],
        device: torch.device,
        sample: bool | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        forward = model if sample is None else functools.partial(model, sample=sample)
        self.loss = BatchLoss(
            model=model,
            forward_model=forward,
            scale_trials=dict(scale_trials),
            device=device,
            avg_loss=False,
            scale_loss=True,
            detach_core=False,
        )

    def forward(self, data_key: str, batch: Batch) -> torch.Tensor:
        """The scalar loss of ``batch`` (``{"images": ..., "responses": ...}``) of session ``data_key``."""
        return self.loss(data_key, dict(batch))


# ----------------------------------------------------------------------------------------------------
# the batched path
# ----------------------------------------------------------------------------------------------------


@dataclass
class StackedModels:
    """K models of one architecture as stacked tensors (leading axis = model).

    Attributes:
        template: a copy of the first model on the ``meta`` device: its code and structure, no data
            (every tensor it uses comes from ``params`` / ``buffers``).
        params: ``{name: (K, *shape)}`` leaf tensors that require gradients (what the optimiser steps).
        buffers: ``{name: (K, *shape)}`` (batch-norm running statistics, the readout's source grid).
    """

    template: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        """The number of models K."""
        return next(iter(self.params.values())).shape[0]

    def model_state(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s parameters and buffers, ``{name: tensor}`` like its ``state_dict``."""
        return {name: tensor[index] for name, tensor in {**self.params, **self.buffers}.items()}


def stack_models(models: Sequence[nn.Module]) -> StackedModels:
    """Stack the parameters and buffers of ``models`` (same architecture, same device).

    The stacked tensors are new: training them leaves ``models`` unchanged.

    Raises:
        ValueError: no models, or models whose parameters differ in names or shapes.
    """
    if not models:
        raise ValueError("stack_models needs at least one model")
    shapes = [[(n, tuple(p.shape)) for n, p in m.named_parameters()] for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError("the models must have the same parameter names and shapes to be stacked")
    params, buffers = stack_module_state(list(models))
    template = copy.deepcopy(models[0]).to("meta")
    template.train(models[0].training)
    return StackedModels(template=template, params=params, buffers=buffers)


def batched_losses(
    stacked: StackedModels,
    data_key: str,
    batch: Batch,
    scale_trials: Mapping[str, int],
    sample: bool | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every model's objective on the same ``batch``, as one vmapped computation.

    Returns:
        The K losses ``(K,)`` (differentiable with respect to ``stacked.params``) and the buffers
        after the forward passes (the batch-norm running statistics updated in training mode),
        ``{name: (K, *shape)}``.
    """
    device = batch["images"].device
    objective = Objective(stacked.template, scale_trials, device, sample=sample)

    def one_model(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> tuple:
        # the forward pass updates the batch-norm statistics of this clone, returned as an output
        own_buffers = {f"model.{name}": tensor.clone() for name, tensor in buffers.items()}
        state = {**{f"model.{name}": tensor for name, tensor in params.items()}, **own_buffers}
        loss = functional_call(objective, state, (data_key, batch))
        return loss, {name[len("model.") :]: tensor for name, tensor in own_buffers.items()}

    return vmap(one_model, randomness="different")(stacked.params, stacked.buffers)


def make_optimizer(stacked: StackedModels, lr: float = LR) -> torch.optim.Adam:
    """One Adam over the stacked parameters (elementwise, so each model keeps its own moments)."""
    return torch.optim.Adam(list(stacked.params.values()), lr=lr)


def batched_step(
    stacked: StackedModels,
    optimizer: torch.optim.Optimizer,
    data_key: str,
    batch: Batch,
    scale_trials: Mapping[str, int],
    sample: bool | None = None,
) -> torch.Tensor:
    """One optimiser step of all K models on ``batch``; returns the K losses (detached).

    The gradient is that of the sum of the K losses: the models share no parameter, so the slice
    of a stacked parameter's gradient that belongs to model k is the gradient of model k's loss.
    """
    optimizer.zero_grad(set_to_none=True)
    losses, buffers = batched_losses(stacked, data_key, batch, scale_trials, sample=sample)
    losses.sum().backward()
    optimizer.step()
    stacked.buffers = {name: tensor.detach() for name, tensor in buffers.items()}
    return losses.detach()


# ----------------------------------------------------------------------------------------------------
# the sequential path
# ----------------------------------------------------------------------------------------------------


def sequential_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_key: str,
    batch: Batch,
    scale_trials: Mapping[str, int],
    sample: bool | None = None,
) -> torch.Tensor:
    """One plain optimiser step of one model on ``batch`` (the trainer's objective); returns the loss."""
    objective = Objective(model, scale_trials, batch["images"].device, sample=sample)
    optimizer.zero_grad(set_to_none=True)
    loss = objective(data_key, batch)
    loss.backward()
    optimizer.step()
    return loss.detach()


def max_abs_difference(stacked: StackedModels, models: Sequence[nn.Module]) -> dict[str, float]:
    """The largest absolute difference between the stacked models and ``models``.

    Returns:
        ``{"parameters": ..., "buffers": ...}`` over every element of every model; an integer
        buffer (batch norm's ``num_batches_tracked``) that differs at all counts as infinite.
    """
    worst = {"parameters": 0.0, "buffers": 0.0}
    for index, model in enumerate(models):
        for group, named in (("parameters", model.named_parameters()), ("buffers", model.named_buffers())):
            for name, tensor in named:
                stacked_tensor = (stacked.params if group == "parameters" else stacked.buffers)[name][index]
                if tensor.is_floating_point():
                    difference = float((stacked_tensor.detach() - tensor.detach()).abs().max())
                else:
                    difference = 0.0 if torch.equal(stacked_tensor, tensor) else float("inf")
                worst[group] = max(worst[group], difference)
    return worst


# ----------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------


def _configs() -> dict[str, dict[str, Any]]:
    from benchmarks.bench_throughput import SMALL_MODEL
    from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG

    return {"small": SMALL_MODEL, "sota": SENSORIUM_SOTA_MODEL_CONFIG}


def _loaders(workdir: Path, batch_size: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """The loaders of bench_gpu.py's dataset (the real subset, or a synthetic one of its size)."""
    from benchmarks.bench_gpu import dataset_path
    from pipeline.data import static_loaders

    return static_loaders(
        [str(dataset_path(workdir))],
        batch_size=batch_size,
        seed=1,
        normalize=True,
        device=str(device) if device.type == "cuda" else None,
        cache_dir=str(workdir / "cache"),
    )


def _train_batches(loader: Any, steps: int) -> list[dict[str, torch.Tensor]]:
    """The first ``steps`` full batches of ``loader`` (passes repeated as needed) as dicts."""
    from pipeline.contracts import split_batch

    batches: list[dict[str, torch.Tensor]] = []
    while len(batches) < steps:
        for batch in loader:
            images, responses, _ = split_batch(batch)
            if images.shape[0] == loader.batch_size:
                batches.append({"images": images, "responses": responses})
            if len(batches) == steps:
                break
    return batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_step(
    device: torch.device, paths: Sequence[Sequence[Callable[[], Any]]]
) -> list[tuple[float, float]]:
    """Seconds per step of every path's ``steps[1:]`` (``steps[0]``: an untimed warm-up), peak GPU MiB.

    On CUDA every path's loop is timed as a whole (no synchronisation between its steps, as a
    trainer runs them), one path after the other, and divided by its number of steps. On the CPU the
    paths take turns step by step (round r: step r of every path), every step is timed on its own
    and the median is returned: another process's load on the machine then falls on all paths
    alike, and a step it delays does not move the median. The peak is NaN on the CPU.
    """
    results = []
    if device.type == "cuda":
        for steps in paths:
            steps[0]()
            _synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for step in steps[1:]:
                step()
            _synchronize(device)
            seconds = (time.perf_counter() - start) / (len(steps) - 1)
            results.append((seconds, torch.cuda.max_memory_allocated(device) / 2**20))
        return results
    times: list[list[float]] = [[] for _ in paths]
    for round_no in range(len(paths[0])):
        for steps, spent in zip(paths, times, strict=True):
            start = time.perf_counter()
            steps[round_no]()
            spent.append(time.perf_counter() - start)
    return [(float(np.median(spent[1:])), float("nan")) for spent in times]


def _place(model: nn.Module, device: torch.device) -> nn.Module:
    """As the trainer places a model: on ``device``, channels-last weights on the CPU, train mode."""
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model.train()


def _double(batch: Batch) -> dict[str, torch.Tensor]:
    return {name: tensor.double() for name, tensor in batch.items()}


def check_equivalence(
    models: Sequence[nn.Module],
    data_key: str,
    batches: Sequence[Batch],
    scale_trials: Mapping[str, int],
) -> dict[str, float]:
    """The batched path against the sequential one from the same weights, on float64 copies.

    ``len(batches)`` steps of both paths with the readout's sampling off; ``models`` are left as
    they are. Float64, because Adam's first steps are ±lr for every element whatever the size of its
    gradient, so an element whose gradient is at float32 rounding level (the two paths sum in a
    different order) would step in a random direction and hide a real difference; in float64 the
    paths agree to ~1e-12.

    Returns:
        :func:`max_abs_difference` of the two results.
    """
    copies = [copy.deepcopy(model).double() for model in models]
    stacked = stack_models(copies)
    optimizer = make_optimizer(stacked)
    for batch in batches:
        batched_step(stacked, optimizer, data_key, _double(batch), scale_trials, sample=False)
    for model in copies:
        own = torch.optim.Adam(model.parameters(), lr=LR)
        for batch in batches:
            sequential_step(model, own, data_key, _double(batch), scale_trials, sample=False)
    return max_abs_difference(stacked, copies)


def compare(
    loaders: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    k: int,
    steps: int,
    check_steps: int,
    device: torch.device,
    check_batch_size: int = 32,
) -> dict[str, float]:
    """Build K models (seeds 1..K), check the batched path against the sequential one, time both.

    The check (:func:`check_equivalence`, ``check_steps`` steps) runs on float64 copies with the
    first ``check_batch_size`` trials of each batch (float64 is slow on the CPU); then both
    paths train the float32 models from the same initial weights with sampling on, one untimed
    warm-up step and ``steps`` timed steps per model (see :func:`_seconds_per_step`).

    Returns:
        ``models``, ``param_diff``, ``buffer_diff`` (the check), ``batched_step_s`` (one step of all
        K models), ``sequential_step_s`` (K single steps), ``batched_rate`` and
        ``sequential_rate`` (model-steps per second), ``ratio`` (batched / sequential rate) and the
        peak GPU MiB of each path (NaN on the CPU).
    """
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from pipeline.training.cpu_memory import reuse_freed_memory
    from pipeline.training.loss_scale import loss_scale_trials

    data_key, loader = next(iter(loaders["train"].items()))
    scale_trials = {data_key: loss_scale_trials(loader, "all")}
    batches = _train_batches(loader, max(steps + 1, check_steps))
    models = [
        _place(stacked_core_full_gauss_readout(loaders, seed=seed, **config), device)
        for seed in range(1, k + 1)
    ]
    row: dict[str, float] = {"models": k}
    check_batches = [{name: t[:check_batch_size] for name, t in b.items()} for b in batches[:check_steps]]
    difference = check_equivalence(models, data_key, check_batches, scale_trials)
    row.update(param_diff=difference["parameters"], buffer_diff=difference["buffers"])

    stacked = stack_models(models)
    stacked_optimizer = make_optimizer(stacked)
    timed = batches[: steps + 1]
    paths = [
        [
            functools.partial(batched_step, stacked, stacked_optimizer, data_key, b, scale_trials)
            for b in timed
        ]
    ]
    for model in models:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        paths.append(
            [functools.partial(sequential_step, model, optimizer, data_key, b, scale_trials) for b in timed]
        )
    with reuse_freed_memory(True) if device.type == "cpu" else nullcontext():
        (batched_s, batched_mib), *per_model = _seconds_per_step(device, paths)
    row.update(
        batched_step_s=batched_s,
        sequential_step_s=sum(seconds for seconds, _ in per_model),
        batched_mib=batched_mib,
        sequential_mib=max(mib for _, mib in per_model),
    )
    row["batched_rate"] = k / row["batched_step_s"]
    row["sequential_rate"] = k / row["sequential_step_s"]
    row["ratio"] = row["batched_rate"] / row["sequential_rate"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", choices=["small", "sota"], default=["small"])
    parser.add_argument("--models", type=int, nargs="+", default=[2, 4], help="values of K")
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per model")
    parser.add_argument("--check-steps", type=int, default=3, help="steps of the equivalence check")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--check-batch-size", type=int, default=32, help="trials per batch in the (float64) check"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available"
    )
    args = parser.parse_args()
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name == "cuda" and not torch.cuda.is_available():
        print("bench_batched: skipped (no CUDA device)")
        return
    device = torch.device(device_name)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(
        f"steps={args.steps} check_steps={args.check_steps} batch={args.batch_size} "
        f"check_batch={args.check_batch_size} device={name} torch={torch.__version__}",
        flush=True,
    )
    print(
        "| config | K | max abs Δ param | max abs Δ BN stat | batched s/step | sequential s/step "
        "| batched model-steps/s | sequential model-steps/s | batched / sequential | peak MiB b / s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        loaders = _loaders(Path(tmp), args.batch_size, device)
        for config in args.config:
            for k in args.models:
                row = compare(
                    loaders,
                    _configs()[config],
                    k,
                    args.steps,
                    args.check_steps,
                    device,
                    check_batch_size=args.check_batch_size,
                )
                print(
                    f"| {config} | {k} | {row['param_diff']:.2e} | {row['buffer_diff']:.2e} "
                    f"| {row['batched_step_s']:.3f} | {row['sequential_step_s']:.3f} "
                    f"| {row['batched_rate']:.2f} | {row['sequential_rate']:.2f} | {row['ratio']:.2f} "
                    f"| {row['batched_mib']:.0f} / {row['sequential_mib']:.0f} |",
                    flush=True,
                )
                if max(row["param_diff"], row["buffer_diff"]) > CHECK_TOLERANCE:
                    failed.append(f"{config} K={k}")
    if failed:
        raise SystemExit(
            f"the batched models differ from the sequential ones (> {CHECK_TOLERANCE:g}) for {', '.join(failed)}"
        )


if __name__ == "__main__":
    main()
