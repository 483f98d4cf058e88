"""The standard trainer: sensorium's ``standard_trainer`` with callbacks, checkpoints and exact resume.

``standard_trainer(model, dataloaders, seed, ...) -> (score, output, state_dict)`` keeps sensorium's
argument names and defaults (see its docstring); on top it calls ``cb(EpochRecord)`` after every
epoch, can continue from ``EpochRecord.training_state()`` with ``resume_state=`` (bit-for-bit the
same result on the CPU as an uninterrupted run), raises :class:`TrainingDivergedError` on a
non-finite loss, and has a tqdm progress bar, bf16 autocast and ``torch.compile`` on GPUs.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import measures
from pipeline.measures import _split_batch
from pipeline.training.cyclers import LongCycler
from pipeline.training.early_stopping import EarlyStopping, copy_state
from pipeline.training.loss_scale import loss_scale_trials as _loss_scale_trials
from pipeline.utils import resolve_device, set_seed

__all__ = ["standard_trainer", "EpochRecord", "StopTraining", "TrainingDivergedError"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
_STOP_FUNCTIONS = ("get_correlations", "get_poisson_loss")
_LOSS_FUNCTIONS = ("PoissonLoss",)


class StopTraining(Exception):
    """Raise from a callback to end training cleanly after the current epoch (best state restored)."""


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochRecord:
    """What the callback receives after every epoch.

    Attributes:
        epoch: the epoch just trained (1-based when training starts at ``epoch=0``).
        train_loss: mean over the epoch's batches of the full objective (scaled loss + regularizers).
        val_correlation: the stop-function value (mean validation correlation by default) when it
            was evaluated this epoch, else None.
        lr: the learning rate after this epoch's scheduler step.
        seconds: wall time of this epoch, evaluation included.
        best_epoch: the epoch with the best validation value so far.
        best_val_correlation: that value.
        done: True when this was the last epoch.
    """

    epoch: int
    train_loss: float
    val_correlation: float | None
    lr: float
    seconds: float
    best_epoch: int
    best_val_correlation: float
    done: bool
    _state_fn: Callable[[], dict[str, Any]] = field(repr=False, default=None)

    def training_state(self) -> dict[str, Any]:
        """The full state to resume from (model, optimiser, scheduler, early stopping, RNGs, loaders,
        history); CPU tensors and plain Python values only, loadable with ``torch.load(weights_only=True)``.

        Call it inside the callback: it snapshots the trainer's state at the time of the call.
        """
        return self._state_fn()


# ----------------------------------------------------------------------------------------------------
# RNG and loader state (for exact resume)
# ----------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generator(loader: Any) -> torch.Generator | None:
    """The torch.Generator a loader shuffles with (``loader.generator`` or ``loader.sampler.generator``)."""
    for owner in (loader, getattr(loader, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            return generator
    return None


def _loader_state(loader: Any) -> Any:
    """A loader's shuffling state: its ``state_dict()`` (our TensorLoader) or its generator's state."""
    if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None)):
        return _to_cpu(loader.state_dict())
    generator = _loader_generator(loader)
    return None if generator is None else {"generator": generator.get_state().cpu()}


def _set_loader_state(loader: Any, state: Any) -> None:
    if callable(getattr(loader, "load_state_dict", None)):
        loader.load_state_dict(state)
        return
    generator = _loader_generator(loader)
    if generator is None:
        raise ValueError("resume_state holds a shuffling state for a loader that has no generator")
    generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------------
# pieces of the objective
# ----------------------------------------------------------------------------------------------------


def _poisson_loss(output: torch.Tensor, target: torch.Tensor, avg: bool, eps: float = 1e-12) -> torch.Tensor:
    loss = output - target * torch.log(output + eps)
    return loss.mean() if avg else loss.sum()


def _regularizer(model: nn.Module, data_key: str, detach_core: bool) -> torch.Tensor | float:
    """Core (unless detach_core) + readout(data_key) + shifter/modulator(data_key) regularizers.

    Sensorium adds only core and readout; the shifter and modulator terms are added here too (they
    are zero with the default ``gamma_shifter=0``) so their regularization is not silently ignored.
    """
    core, readout = getattr(model, "core", None), getattr(model, "readout", None)
    if core is None or readout is None:
        if hasattr(model, "regularizer"):
            return model.regularizer(data_key=data_key, detach_core=detach_core)
        return 0.0
    total = readout.regularizer(data_key)
    if not detach_core and hasattr(core, "regularizer"):
        total = total + core.regularizer()
    for name in ("shifter", "modulator"):
        part = getattr(model, name, None)
        if part is not None and hasattr(part, "regularizer"):
            total = total + part.regularizer(data_key=data_key)
    return total


def _check_loaders(dataloaders: Any) -> None:
    if not isinstance(dataloaders, Mapping):
        raise TypeError(
            f"dataloaders must be a dict {{tier: {{data_key: loader}}}}, got {type(dataloaders).__name__}"
        )
    for tier in ("train", "validation"):
        if tier not in dataloaders:
            raise ValueError(f"dataloaders has no {tier!r} tier (tiers: {sorted(dataloaders)})")
        if not isinstance(dataloaders[tier], Mapping) or not dataloaders[tier]:
            raise ValueError(f"dataloaders[{tier!r}] must be a non-empty dict {{data_key: loader}}")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


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
    interval: int = 1,
    patience: int = 5,
    epoch: int = 0,
    lr_init: float = 0.005,
    max_iter: int = 200,
    maximize: bool = True,
    tolerance: float = 1e-6,
    restore_best: bool = True,
    lr_decay_steps: int = 3,
    lr_decay_factor: float = 0.3,
    min_lr: float = 0.0001,
    track_training: bool = False,
    return_test_score: bool = False,
    detach_core: bool = False,
    progress: bool = True,
    amp: str | None = None,
    compile: bool = False,
    max_seconds: float | None = None,
) -> tuple[float, dict[str, Any], dict[str, torch.Tensor]]:
    """Train ``model`` with Adam, a Poisson loss, LR decay on plateaus and early stopping.

    Every optimiser step sees one batch of every session (:class:`LongCycler`); an epoch is
    ``n_sessions × max(len(train loader))`` batches. A batch's loss is the Poisson loss (summed, or
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
        detach_core: train the readouts only (no gradient into the core, no core regularizer).
        progress: show a tqdm bar over epochs.
        amp: "bf16" runs forward passes under bfloat16 autocast on CUDA; None (default) or on the
            CPU: full precision.
        compile: ``torch.compile`` the model for the training forward pass (CUDA only; ignored on
            the CPU).
        max_seconds: stop cleanly (best state restored) after the first epoch that ends past this
            many seconds of training.

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
    _check_loaders(dataloaders)
    if loss_function not in _LOSS_FUNCTIONS:
        raise ValueError(f"loss_function must be one of {_LOSS_FUNCTIONS}, got {loss_function!r}")
    if stop_function not in _STOP_FUNCTIONS:
        raise ValueError(f"stop_function must be one of {_STOP_FUNCTIONS}, got {stop_function!r}")
    if amp not in (None, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")
    if not (isinstance(lr_init, int | float) and lr_init > 0):
        raise ValueError(f"lr_init must be a positive number, got {lr_init!r}")
    if not 0 < lr_decay_factor < 1:
        raise ValueError(f"lr_decay_factor must be in (0, 1), got {lr_decay_factor!r}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
    n_sessions = len(dataloaders["train"])
    step_every = (
        n_sessions if loss_accum_batch_n is None else _positive_int("loss_accum_batch_n", loss_accum_batch_n)
    )
    if resume_state is not None:
        if not isinstance(resume_state, dict) or resume_state.get("version") != _STATE_VERSION:
            raise ValueError(
                "resume_state must be a dict from EpochRecord.training_state() (version mismatch)"
            )

    dev = resolve_device(device)
    seed = set_seed(seed)
    model.to(dev)
    if dev.type == "cpu":
        # oneDNN runs convolutions (depthwise ones above all) and their backward passes 2-3x faster
        # with channels-last weights; only the layout changes, not the values
        model.to(memory_format=torch.channels_last)
    model.train()
    use_amp = amp == "bf16" and dev.type == "cuda"
    forward_model = torch.compile(model) if compile and dev.type == "cuda" else model
    train_loaders = dataloaders["train"]
    scale_trials = {
        key: _loss_scale_trials(loader, loss_scale_trials) for key, loader in train_loaders.items()
    }
    validation = dataloaders["validation"]
    stop_measure = getattr(measures, stop_function)

    def objective(m: nn.Module) -> float:
        return float(stop_measure(m, validation, device=dev, per_neuron=False, avg=True))

    optimizer = torch.optim.Adam(model.parameters(), lr=lr_init)
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
    history: dict[str, list] = {"train_loss": [], "val_correlation": [], "lr": [], "epoch_seconds": []}
    if track_training:
        history["val_poisson_loss"] = []
    previous_seconds = 0.0

    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        stopper.load_state_dict(resume_state["early_stopping"])
        for key, value in resume_state["history"].items():
            history[key] = list(value)
        previous_seconds = float(resume_state.get("seconds", 0.0))
        for key, loader_state in resume_state.get("loaders", {}).items():
            if key not in train_loaders:
                raise ValueError(
                    f"resume_state holds a loader state for session {key!r}, which has no train loader"
                )
            _set_loader_state(train_loaders[key], loader_state)
        _set_rng_state(resume_state["rng"])  # last: nothing above may draw random numbers afterwards
    else:
        stopper.begin(model)

    started = time.perf_counter()

    def elapsed() -> float:
        return previous_seconds + time.perf_counter() - started

    def training_state() -> dict[str, Any]:
        loader_states = {}
        for key, loader in train_loaders.items():
            loader_state = _loader_state(loader)
            if loader_state is not None:
                loader_states[key] = loader_state
        return {
            "version": _STATE_VERSION,
            "epoch": stopper.epoch,
            "seed": seed,
            "model": copy_state(model),
            "optimizer": _to_cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "early_stopping": stopper.state_dict(),
            "rng": _rng_state(),
            "loaders": loader_states,
            "history": {key: list(value) for key, value in history.items()},
            "seconds": elapsed(),
        }

    show_bar = progress and verbose
    bar = _progress_bar(show_bar, total=max_iter - epoch, initial=stopper.epoch - epoch, uid=uid)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    try:
        for current in stopper.epochs():
            epoch_start = time.perf_counter()
            model.train()
            losses, keys = [], []
            optimizer.zero_grad()
            for batch_no, (data_key, batch) in enumerate(LongCycler(train_loaders)):
                images, responses, extra = _split_batch(batch)
                kwargs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
                with autocast():
                    output = forward_model(
                        images.to(dev), data_key=data_key, detach_core=detach_core, **kwargs
                    )
                loss = _poisson_loss(output.float(), responses.to(dev), avg=avg_loss)
                if scale_loss:
                    loss = loss * math.sqrt(scale_trials[data_key] / images.shape[0])
                loss = loss + _regularizer(model, data_key, detach_core)
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
                    f"the training loss became {batch_losses[first].item()} in epoch {current}, "
                    f"session {keys[first]!r}, batch {first} of the epoch: lower lr_init or check the data "
                    "for NaN/inf values"
                )
            train_loss = float(batch_losses.mean())

            value = stopper.end_epoch(model)
            if track_training:
                history["val_poisson_loss"].append(
                    float(measures.get_poisson_loss(model, validation, device=dev, per_neuron=False))
                    if value is not None
                    else None
                )
            lr = float(optimizer.param_groups[0]["lr"])
            seconds = time.perf_counter() - epoch_start
            history["train_loss"].append(train_loss)
            history["val_correlation"].append(value)
            history["lr"].append(lr)
            history["epoch_seconds"].append(seconds)
            if max_seconds is not None and elapsed() >= max_seconds:
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
                    _state_fn=training_state,
                )
                try:
                    stop_requested = cb(record) is True
                except StopTraining:
                    stop_requested = True
                if stop_requested:
                    stopper.stop(model, "callback")
        if not stopper.done:
            stopper.stop(model, "max_iter")
    finally:
        bar.close()

    model.eval()
    score = float(objective(model))
    output: dict[str, Any] = {key: list(value) for key, value in history.items()}
    output.update(
        epochs=stopper.epoch,
        best_epoch=stopper.best_epoch,
        validation_correlation=score,
        validation_corr=score,
        initial_val_correlation=stopper.initial_objective,
        stopped_by=stopper.reason,
        seconds=elapsed(),
        device=str(dev),
        seed=seed,
        uid=None if uid is None else str(uid),
        n_parameters=sum(p.numel() for p in model.parameters()),
    )
    if return_test_score and "test" in dataloaders:
        output["test_correlation"] = float(
            measures.get_correlations(model, dataloaders["test"], device=dev, per_neuron=False)
        )
    return score, output, copy_state(model)


def _to_cpu(value: Any) -> Any:
    """A copy of a nested dict/list structure with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


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
