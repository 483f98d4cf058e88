"""The standard trainer: sensorium's ``standard_trainer`` with callbacks, checkpoints and exact resume.

``standard_trainer(model, dataloaders, seed, ...) -> (score, output, state_dict)`` keeps sensorium's
argument names and defaults (see its docstring); on top it calls ``cb(EpochRecord)`` after every
epoch (:mod:`pipeline.training.records`), can continue from ``EpochRecord.training_state()`` with
``resume_state=`` (bit-for-bit the same result on the CPU as an uninterrupted run: everything that
changes while training lives in a :class:`~pipeline.training.run.TrainingRun`), raises
:class:`TrainingDivergedError` on a non-finite loss, and has a tqdm progress bar, bf16 autocast and
``torch.compile`` on GPUs.

The pieces: :class:`~pipeline.training.loss.BatchLoss` computes one batch's objective,
:func:`_train_epoch` runs one epoch of optimiser steps, and :func:`standard_trainer` checks its
arguments, builds the run and loops over epochs under early stopping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config_types import (
    LearningRate,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
)
from pipeline.contracts import is_tier_dict, resolve_device, tier_loaders
from pipeline.measures import get_correlations, get_poisson_loss
from pipeline.training.cpu_memory import reuse_freed_memory
from pipeline.training.cyclers import LongCycler
from pipeline.training.early_stopping import EarlyStopping, copy_state
from pipeline.training.loss import BatchLoss
from pipeline.training.loss_scale import loss_scale_trials as _loss_scale_trials
from pipeline.training.records import EpochRecord, StopTraining, TrainingDivergedError
from pipeline.training.run import HISTORY_CURVES, TrainingRun
from pipeline.utils import set_seed

__all__ = ["EpochRecord", "StopTraining", "TrainingDivergedError", "standard_trainer"]

#: the stop functions by their sensorium names (the validation measure early stopping follows)
_STOP_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "get_correlations": get_correlations,
    "get_poisson_loss": get_poisson_loss,
}
_LOSS_FUNCTIONS = ("PoissonLoss",)


# ----------------------------------------------------------------------------------------------------
# one epoch
# ----------------------------------------------------------------------------------------------------


def _train_epoch(run: TrainingRun, batch_loss: BatchLoss, step_every: int, epoch: int) -> float:
    """Train one epoch: an optimiser step every ``step_every`` batches. Returns the mean batch loss.

    Raises:
        TrainingDivergedError: a batch's loss was NaN/inf (named by epoch, session and batch).
    """
    optimizer = run.optimizer
    run.model.train()
    losses, keys = [], []
    optimizer.zero_grad()
    for batch_no, (data_key, batch) in enumerate(LongCycler(run.train_loaders)):
        loss = batch_loss(data_key, batch)
        loss.backward()
        if (batch_no + 1) % step_every == 0:
            optimizer.step()
            optimizer.zero_grad()
        # kept as tensors: one device sync per epoch instead of one per batch
        losses.append(loss.detach())
        keys.append(data_key)
    batch_losses = torch.stack(losses)
    finite = torch.isfinite(batch_losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise TrainingDivergedError(
            f"the training loss became {batch_losses[first].item()} in epoch {epoch}, "
            f"session {keys[first]!r}, batch {first} of the epoch: lower lr_init or check the data "
            "for NaN/inf values"
        )
    return float(batch_losses.mean())


# ----------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------


def standard_trainer(
    model: nn.Module,
    dataloaders: Mapping[str, Mapping[str, Any]],
    seed: int,
    uid: Any = None,
    cb: Callable[[EpochRecord], Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    avg_loss: bool = False,
    scale_loss: bool = True,
    loss_scale_trials: str = "all",
    loss_function: str = "PoissonLoss",
    stop_function: str = "get_correlations",
    loss_accum_batch_n: int | None = None,
    device: str | torch.device = "cuda",
    verbose: bool = True,
    interval: PositiveInt = 1,
    patience: NonNegativeInt = 5,
    epoch: NonNegativeInt = 0,
    lr_init: LearningRate = 0.005,
    max_iter: PositiveInt = 200,
    maximize: bool = True,
    tolerance: NonNegativeFloat = 1e-6,
    restore_best: bool = True,
    lr_decay_steps: PositiveInt = 3,
    lr_decay_factor: UnitInterval = 0.3,
    min_lr: NonNegativeFloat = 0.0001,
    track_training: bool = False,
    return_test_score: bool = False,
    detach_core: bool = False,
    progress: bool = True,
    amp: str | None = None,
    compile: bool = False,
    max_seconds: PositiveFloat | None = None,
    reuse_cpu_memory: bool = True,
) -> tuple[float, dict[str, Any], dict[str, torch.Tensor]]:
    """Train ``model`` with Adam, a Poisson loss, LR decay on plateaus and early stopping.

    Every optimiser step sees one batch of every session (:class:`LongCycler`); an epoch is
    ``n_sessions × max(len(train loader))`` batches. A batch's loss (:mod:`pipeline.training.loss`) is the Poisson loss (summed, or
    averaged with ``avg_loss``) × sqrt(n_trials / batch size) with ``scale_loss`` — n_trials counts
    every trial of the session, all tiers, as sensorium's (see ``loss_scale_trials``) — plus the core
    (unless ``detach_core``), readout, shifter and modulator regularizers of that session.
    Every ``interval`` epochs the ``stop_function`` (mean validation correlation) is evaluated and fed
    to ``ReduceLROnPlateau(mode max|min, factor=lr_decay_factor, patience, threshold=tolerance, abs,
    min_lr)`` and to early stopping (see :mod:`pipeline.training.early_stopping`), which ends after
    ``lr_decay_steps`` rounds of ``patience`` evaluations without improvement or at ``max_iter``.

    Args:
        model: e.g. a ``FiringRateEncoder``; called as ``model(images, data_key=k, detach_core=...,
            **other_batch_fields)``.
        dataloaders: ``{"train": {data_key: loader}, "validation": {...}, ["test": {...}]}``.
        seed: seeds Python, NumPy and torch at the start (not again on resume).
        uid: an identifier of the run (nnfabrik passes the table key); shown in the progress bar.
        cb: called after every epoch with an :class:`EpochRecord`; returning True or raising
            :class:`StopTraining` ends training after that epoch, with the best state restored
            (``restore_best``) and the normal return values.
        resume_state: an ``EpochRecord.training_state()`` dict to continue from; with the same model
            architecture, loaders, seed and config the result equals that of an uninterrupted run.
        avg_loss: average the Poisson loss over the batch instead of summing it.
        scale_loss: multiply the loss by sqrt(n_trials / batch size) (batch size: of this batch).
        loss_scale_trials: what n_trials counts: "all" (default, as sensorium: the session's
            trials in every tier) or "train" (the train loader's trials); see
            :mod:`pipeline.training.loss_scale`.
        loss_function: "PoissonLoss" (the only one).
        stop_function: "get_correlations" (maximize=True) or "get_poisson_loss" (maximize=False).
        loss_accum_batch_n: batches per optimiser step; default = the number of sessions.
        device: "cuda" (the default, as in sensorium: a clear error on a machine without CUDA),
            "cuda:<i>", "cpu" or "auto" (CUDA when available).
        verbose: log the schedule; False also hides the progress bar.
        interval: evaluate every ``interval`` epochs.
        patience: evaluations without improvement before the LR decays / a round ends.
        epoch: the starting epoch count.
        lr_init: Adam's initial learning rate.
        max_iter: the last epoch.
        maximize: whether the stop function is maximized.
        tolerance: the absolute improvement that counts.
        restore_best: restore the best state at the end of every round and at the end.
        lr_decay_steps: number of early-stopping rounds.
        lr_decay_factor: LR multiplier on a plateau.
        min_lr: the LR floor.
        track_training: also record the validation Poisson loss every evaluated epoch.
        return_test_score: also compute the test correlation (``output["test_correlation"]``).
        detach_core: train the readouts only (no gradient into the core, no core regularizer);
            implied when the model's core is frozen (``model.core_frozen``). A model with
            ``parameter_groups(lr)`` (``FiringRateEncoder``: the core's own ``core_lr``) gets its
            Adam groups from it.
        progress: show a tqdm bar over epochs.
        amp: "bf16" runs forward passes under bfloat16 autocast on CUDA; None (default) or on the
            CPU: full precision.
        compile: ``torch.compile`` the model for the training forward pass (CUDA only; ignored on
            the CPU).
        max_seconds: stop cleanly (best state restored) after the first epoch that ends past this
            many seconds of training.
        reuse_cpu_memory: on the CPU, keep freed memory in the process while training so the next
            step reuses it (glibc ``mallopt``, see :mod:`pipeline.training.cpu_memory`; the SOTA
            model's steps spend ~1/3 of their time page-faulting fresh memory otherwise). The
            numbers computed are the same either way; the process keeps its peak heap until training
            ends. False: glibc's defaults.

    Returns:
        ``(score, output, state_dict)``: the mean validation correlation (stop function) of the
        returned model; a JSON-able dict of learning curves and facts (``train_loss``,
        ``val_correlation``, ``lr``, ``epoch_seconds`` per epoch, ``epochs``, ``best_epoch``,
        ``validation_correlation``, ``validation_corr``, ``initial_val_correlation``,
        ``stopped_by``, ``seconds``, ``device`` ...); the model's state dict as CPU tensors.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (names the epoch, session and batch).
        ValueError/TypeError: bad loaders or configuration.
    """
    train, validation, step_every = _check_arguments(
        dataloaders,
        loss_function,
        stop_function,
        amp,
        lr_init,
        lr_decay_factor,
        max_seconds,
        loss_accum_batch_n,
        resume_state,
    )
    dev = resolve_device(device)
    # a model whose core is frozen (FiringRateEncoder.freeze_core) trains like detach_core=True
    detach_core = bool(detach_core or getattr(model, "core_frozen", False))
    seed = set_seed(seed)
    forward_model = _place_model(model, dev, compile)
    stop_measure = _STOP_FUNCTIONS[stop_function]

    def objective(m: nn.Module) -> float:
        return float(stop_measure(m, validation, device=dev, per_neuron=False, avg=True))

    run = _new_run(
        model,
        train,
        objective,
        seed,
        lr_init=lr_init,
        maximize=maximize,
        lr_decay_factor=lr_decay_factor,
        patience=patience,
        tolerance=tolerance,
        min_lr=min_lr,
        interval=interval,
        epoch=epoch,
        max_iter=max_iter,
        restore_best=restore_best,
        lr_decay_steps=lr_decay_steps,
        track_training=track_training,
    )
    stopper = run.stopper
    if resume_state is not None:
        run.load_state_dict(resume_state)
    else:
        run.begin()
    use_amp = amp == "bf16" and dev.type == "cuda"
    batch_loss = BatchLoss(
        model=model,
        forward_model=forward_model,
        scale_trials={key: _loss_scale_trials(loader, loss_scale_trials) for key, loader in train.items()},
        device=dev,
        avg_loss=avg_loss,
        scale_loss=scale_loss,
        detach_core=detach_core,
        autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext,
    )

    bar = _progress_bar(progress and verbose, total=max_iter - epoch, initial=stopper.epoch - epoch, uid=uid)
    # freed activation tensors are reused by the next step instead of being page-faulted anew
    with reuse_freed_memory(reuse_cpu_memory and dev.type == "cpu"):
        try:
            for current in stopper.epochs():
                epoch_start = time.perf_counter()
                train_loss = _train_epoch(run, batch_loss, step_every, current)
                value = stopper.end_epoch(model)
                if track_training:
                    run.record(
                        val_poisson_loss=float(
                            get_poisson_loss(model, validation, device=dev, per_neuron=False)
                        )
                        if value is not None
                        else None
                    )
                lr = float(run.optimizer.param_groups[0]["lr"])
                seconds = time.perf_counter() - epoch_start
                run.record(train_loss=train_loss, val_correlation=value, lr=lr, epoch_seconds=seconds)
                if max_seconds is not None and run.elapsed() >= max_seconds:
                    stopper.stop(model, "max_seconds")
                bar.update(1)
                bar.set_postfix(
                    loss=f"{train_loss:.4g}",
                    val=_fmt(value),
                    best=f"{stopper.best_objective:.4f}",
                    lr=f"{lr:.2g}",
                )
                if cb is not None:
                    record = EpochRecord(
                        epoch=current,
                        train_loss=train_loss,
                        val_correlation=value,
                        lr=lr,
                        seconds=seconds,
                        best_epoch=stopper.best_epoch,
                        best_val_correlation=stopper.best_objective,
                        done=stopper.done,
                        _state_fn=run.state_dict,
                    )
                    if _callback_stops(cb, record):
                        stopper.stop(model, "callback")
            if not stopper.done:
                stopper.stop(model, "max_iter")
        finally:
            bar.close()

    model.eval()
    score = float(objective(model))
    output = _training_output(run, score, dev, seed, uid)
    if return_test_score and "test" in dataloaders:
        output["test_correlation"] = float(
            get_correlations(model, dataloaders["test"], device=dev, per_neuron=False)
        )
    return score, output, copy_state(model)


def _new_run(
    model: nn.Module,
    train: Mapping[str, Any],
    objective: Callable[[nn.Module], float],
    seed: int,
    *,
    lr_init: float,
    maximize: bool,
    lr_decay_factor: float,
    patience: int,
    tolerance: float,
    min_lr: float,
    interval: int,
    epoch: int,
    max_iter: int,
    restore_best: bool,
    lr_decay_steps: int,
    track_training: bool,
) -> TrainingRun:
    """Adam, ``ReduceLROnPlateau`` on the objective and early stopping, held by a new :class:`TrainingRun`."""
    # a model may give its own parameter groups (a transferred core's learning rate, a frozen core)
    groups = model.parameter_groups(lr_init) if hasattr(model, "parameter_groups") else model.parameters()
    optimizer = torch.optim.Adam(groups, lr=lr_init)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max" if maximize else "min",
        factor=lr_decay_factor,
        patience=patience,
        threshold=tolerance,
        threshold_mode="abs",
        min_lr=min_lr,
    )
    stopper = EarlyStopping(
        objective,
        interval=interval,
        patience=patience,
        start=epoch,
        max_iter=max_iter,
        maximize=maximize,
        tolerance=tolerance,
        restore_best=restore_best,
        lr_decay_steps=lr_decay_steps,
        scheduler=scheduler,
    )
    curves = HISTORY_CURVES + ("val_poisson_loss",) * bool(track_training)
    return TrainingRun(model, optimizer, scheduler, stopper, train, seed, curves)


def _training_output(
    run: TrainingRun, score: float, device: torch.device, seed: int, uid: Any
) -> dict[str, Any]:
    """The trainer's JSON-able output: the learning curves and the facts of the run."""
    stopper = run.stopper
    output: dict[str, Any] = {key: list(value) for key, value in run.history.items()}
    output.update(
        epochs=stopper.epoch,
        best_epoch=stopper.best_epoch,
        validation_correlation=score,
        validation_corr=score,
        initial_val_correlation=stopper.initial_objective,
        stopped_by=stopper.reason,
        seconds=run.elapsed(),
        device=str(device),
        seed=seed,
        uid=None if uid is None else str(uid),
        n_parameters=sum(p.numel() for p in run.model.parameters()),
    )
    return output


def _check_arguments(
    dataloaders: Any,
    loss_function: str,
    stop_function: str,
    amp: str | None,
    lr_init: Any,
    lr_decay_factor: Any,
    max_seconds: float | None,
    loss_accum_batch_n: int | None,
    resume_state: Any,
) -> tuple[Mapping[str, Any], Mapping[str, Any], int]:
    """Validate the configuration; return the train and validation tiers and the batches per step."""
    if isinstance(dataloaders, Mapping) and not is_tier_dict(dataloaders):
        raise ValueError(
            "dataloaders must be the full dict {tier: {data_key: loader}} with 'train' and 'validation' "
            f"tiers, got keys {sorted(dataloaders)}"
        )
    train = tier_loaders(dataloaders, "train")
    validation = tier_loaders(dataloaders, "validation")
    if loss_function not in _LOSS_FUNCTIONS:
        raise ValueError(f"loss_function must be one of {_LOSS_FUNCTIONS}, got {loss_function!r}")
    if stop_function not in _STOP_FUNCTIONS:
        raise ValueError(f"stop_function must be one of {tuple(_STOP_FUNCTIONS)}, got {stop_function!r}")
    if amp not in (None, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")
    if not (isinstance(lr_init, int | float) and lr_init > 0):
        raise ValueError(f"lr_init must be a positive number, got {lr_init!r}")
    if not 0 < lr_decay_factor < 1:
        raise ValueError(f"lr_decay_factor must be in (0, 1), got {lr_decay_factor!r}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
    step_every = (
        len(train) if loss_accum_batch_n is None else _positive_int("loss_accum_batch_n", loss_accum_batch_n)
    )
    if resume_state is not None:
        TrainingRun.check_state(resume_state)
    return train, validation, step_every


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _place_model(model: nn.Module, device: torch.device, compile: bool) -> Callable[..., torch.Tensor]:
    """Move ``model`` to ``device`` in train mode; return what runs its training forward pass."""
    model.to(device)
    if device.type == "cpu":
        # oneDNN runs convolutions (depthwise ones above all) and their backward passes 2-3x faster
        # with channels-last weights; only the layout changes, not the values
        model.to(memory_format=torch.channels_last)
    model.train()
    return torch.compile(model) if compile and device.type == "cuda" else model


def _callback_stops(cb: Callable[[EpochRecord], Any], record: EpochRecord) -> bool:
    """Call the callback; True when it asks to stop (returns True or raises StopTraining)."""
    try:
        return cb(record) is True
    except StopTraining:
        return True


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(show: bool, total: int, initial: int, uid: Any) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm  # imported only when a bar is shown

    return tqdm(
        total=total, initial=initial, desc="training" if uid is None else f"training {uid}", unit="epoch"
    )
