"""Early stopping with learning-rate decay rounds, as an explicit state machine that can be saved.

The peer library writes early stopping as a generator; a generator's local variables cannot be
saved in a checkpoint, so here the same schedule is a small object whose whole state is a dict
(``state_dict``/``load_state_dict``) and which the trainer drives epoch by epoch::

    stopper = EarlyStopping(objective, patience=5, max_iter=200, lr_decay_steps=3, scheduler=scheduler)
    stopper.begin(model)                      # scores the untrained model
    for epoch in stopper.epochs():            # yields epoch numbers until it is done
        train_one_epoch()
        value = stopper.end_epoch(model)      # evaluates every `interval` epochs (None otherwise)

Schedule (the peer's semantics): the objective is evaluated every ``interval`` epochs and passed to
the scheduler (e.g. ``ReduceLROnPlateau``). It improves when it beats the best value by more than
``tolerance``; then the model state is copied as the best. After ``patience`` evaluations without
improvement a round ends: the best state is restored (with ``restore_best``) and, until
``lr_decay_steps`` rounds have ended, a new round starts with a fresh patience count. Training ends
after the last round, at ``max_iter`` epochs, on a non-finite objective, or when ``stop()`` is
called; at the end the best state is restored (with ``restore_best``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["EarlyStopping", "copy_state"]

logger = logging.getLogger(__name__)


def copy_state(model: nn.Module) -> OrderedDict:
    """A detached copy of ``model.state_dict()`` with every tensor on the CPU."""
    return OrderedDict(
        (key, value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value)
        for key, value in model.state_dict().items()
    )


class EarlyStopping:
    """Tracks the best objective and decides when to evaluate, restore and stop.

    Args:
        objective: ``objective(model) -> float``, e.g. the mean validation correlation. It is
            called with the model in eval mode; the model's mode is restored afterwards.
        interval: evaluate every ``interval`` epochs (and at ``max_iter``).
        patience: evaluations without improvement that end a round.
        start: the epoch count before the first trained epoch.
        max_iter: the last epoch.
        maximize: whether larger objective values are better.
        tolerance: the margin by which a value must beat the best to count as an improvement.
        restore_best: restore the best state at the end of each round and at the end.
        lr_decay_steps: the number of rounds.
        scheduler: anything with ``step(value)``, stepped after every evaluation; its own state is
            saved by the caller.
    """

    def __init__(
        self,
        objective: Callable[[nn.Module], float],
        interval: int = 1,
        patience: int = 5,
        start: int = 0,
        max_iter: int = 200,
        maximize: bool = True,
        tolerance: float = 1e-6,
        restore_best: bool = True,
        lr_decay_steps: int = 1,
        scheduler: Any = None,
    ):
        for name, value, low in (
            ("interval", interval, 1),
            ("patience", patience, 1),
            ("lr_decay_steps", lr_decay_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"epoch (start) must be a non-negative integer, got {start!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < start:
            raise ValueError(f"max_iter must be an integer ≥ the start epoch {start}, got {max_iter!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be ≥ 0, got {tolerance}")
        self.objective = objective
        self.interval = interval
        self.patience = patience
        self.start = start
        self.max_iter = max_iter
        self.maximize = maximize
        self.tolerance = float(tolerance)
        self.restore_best = restore_best
        self.lr_decay_steps = lr_decay_steps
        self.scheduler = scheduler

        self.epoch = start
        self.round = 0
        self.patience_counter = 0
        self.best_objective: float | None = None
        self.best_epoch = start
        self.best_state: OrderedDict | None = None
        self.initial_objective: float | None = None
        self.done = False
        self.reason: str | None = None

    # ------------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> float:
        """The objective of ``model`` in eval mode (its mode restored after)."""
        was_training = model.training
        model.eval()
        try:
            return float(self.objective(model))
        finally:
            model.train(was_training)

    def begin(self, model: nn.Module) -> float:
        """Score the model before training and take its state as the first best."""
        value = self.evaluate(model)
        self.initial_objective = value
        self.best_objective = value
        self.best_epoch = self.epoch
        self.best_state = copy_state(model)
        return value

    def epochs(self) -> Iterator[int]:
        """Yield the number of each epoch to train until training is over."""
        if self.best_state is None:
            raise RuntimeError("call begin(model) (or load_state_dict) before iterating over epochs")
        while not self.done and self.epoch < self.max_iter:
            self.epoch += 1
            yield self.epoch

    def _improved(self, value: float) -> bool:
        if self.maximize:
            return value > self.best_objective + self.tolerance
        return value < self.best_objective - self.tolerance

    def end_epoch(self, model: nn.Module) -> float | None:
        """Call after training epoch ``self.epoch``: evaluate when due and update the schedule.

        Returns:
            The objective value when evaluated in this epoch, else None.
        """
        due = (self.epoch - self.start) % self.interval == 0 or self.epoch >= self.max_iter
        if not due:
            return None
        value = self.evaluate(model)
        if not math.isfinite(value):
            logger.warning("objective is %s at epoch %d: stopping", value, self.epoch)
            self._finish(model, "non-finite objective")
            return value
        if self.scheduler is not None:
            self.scheduler.step(value)
        if self._improved(value):
            self.best_objective = value
            self.best_epoch = self.epoch
            self.best_state = copy_state(model)
            self.patience_counter = 0
        else:
            self.patience_counter += 1
        logger.info(
            "epoch %d: objective %.6f (best %.6f at epoch %d, patience %d/%d, round %d/%d)",
            self.epoch, value, self.best_objective, self.best_epoch,
            self.patience_counter, self.patience, self.round + 1, self.lr_decay_steps,
        )  # fmt: skip
        if self.patience_counter >= self.patience:
            self.round += 1
            if self.round >= self.lr_decay_steps:
                self._finish(model, "early stopping")
                return value
            self.patience_counter = 0
            if self.restore_best:
                model.load_state_dict(self.best_state)
        if self.epoch >= self.max_iter:
            self._finish(model, "max_iter")
        return value

    def stop(self, model: nn.Module, reason: str = "stopped") -> None:
        """End training now (callback, time limit); restores the best state with ``restore_best``."""
        if not self.done:
            self._finish(model, reason)

    def _finish(self, model: nn.Module, reason: str) -> None:
        self.done = True
        self.reason = reason
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: counters, best value/epoch and the best state (CPU tensors)."""
        return {
            "epoch": self.epoch,
            "round": self.round,
            "patience_counter": self.patience_counter,
            "best_objective": self.best_objective,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "initial_objective": self.initial_objective,
            "done": self.done,
            "reason": self.reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output."""
        missing = {"epoch", "round", "patience_counter", "best_objective", "best_epoch", "best_state"} - set(
            state
        )
        if missing:
            raise ValueError(f"early-stopping state lacks {sorted(missing)}")
        self.epoch = int(state["epoch"])
        self.round = int(state["round"])
        self.patience_counter = int(state["patience_counter"])
        self.best_objective = float(state["best_objective"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = OrderedDict(state["best_state"])
        self.initial_objective = state.get("initial_objective")
        self.done = bool(state.get("done", False))
        self.reason = state.get("reason")
