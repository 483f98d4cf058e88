"""One training run's state in one object: what it holds is what a checkpoint saves and restores.

:class:`TrainingRun` holds the model, the optimiser, the learning-rate scheduler, the early stopper,
the learning curves, the train loaders (whose shuffling state is saved) and the seconds trained.
``state_dict()`` adds the global RNG states (Python, NumPy, torch CPU and CUDA) and returns plain
CPU data (``torch.load(weights_only=True)`` reads it back); ``load_state_dict()`` restores all of it
and the RNG states last, so that nothing restored after them can draw a random number. With the
same model architecture, loaders and configuration, a run continued from a state is bit-for-bit the
run that was never interrupted (on the CPU).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.training.early_stopping import EarlyStopping, copy_state

__all__ = ["STATE_VERSION", "TrainingRun"]

#: the layout version of :meth:`TrainingRun.state_dict` (checkpoints in the database carry it)
STATE_VERSION = 1

#: the learning curves every run records, one entry per epoch
HISTORY_CURVES = ("train_loss", "val_correlation", "lr", "epoch_seconds")


class TrainingRun:
    """The mutable state of one training run.

    Args:
        model: the model being trained.
        optimizer: its optimiser.
        scheduler: the learning-rate scheduler (stepped by ``stopper``; saved here).
        stopper: the early-stopping schedule.
        train_loaders: ``{data_key: loader}`` of the train tier; a loader's shuffling state is its
            ``state_dict()`` (``TensorLoader``) or its (sampler's) ``torch.Generator`` state.
        seed: the seed the run started from (recorded in the state).
        curves: the learning curves to record (``history[curve]``, one entry per epoch).

    Attributes:
        history: ``{curve: [value per epoch]}``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stopper: EarlyStopping,
        train_loaders: Mapping[str, Any],
        seed: int,
        curves: Iterable[str] = HISTORY_CURVES,
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.stopper = stopper
        self.train_loaders = train_loaders
        self.seed = seed
        self.history: dict[str, list] = {curve: [] for curve in curves}
        self._seconds_before = 0.0
        self._clock = time.perf_counter()

    # ------------------------------------------------------------------------------------ running
    def begin(self) -> None:
        """Start a fresh run: score the untrained model (its state is the first best) and start the clock."""
        self.stopper.begin(self.model)
        self._clock = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds trained, those before a resume included (the initial evaluation excluded)."""
        return self._seconds_before + time.perf_counter() - self._clock

    def record(self, **values: Any) -> None:
        """Append one epoch's value to each named learning curve."""
        for curve, value in values.items():
            self.history[curve].append(value)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The full state to resume from: CPU tensors and plain Python values only."""
        loader_states = {}
        for key, loader in self.train_loaders.items():
            loader_state = _loader_state(loader)
            if loader_state is not None:
                loader_states[key] = loader_state
        return {
            "version": STATE_VERSION,
            "epoch": self.stopper.epoch,
            "seed": self.seed,
            "model": copy_state(self.model),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": _rng_state(),
            "loaders": loader_states,
            "history": {curve: list(values) for curve, values in self.history.items()},
            "seconds": self.elapsed(),
        }

    @staticmethod
    def check_state(state: Any) -> None:
        """Raise a ValueError unless ``state`` is a :meth:`state_dict` of this layout version."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                "resume_state must be a dict from EpochRecord.training_state() (version mismatch)"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output; the clock restarts from the seconds it holds."""
        self.check_state(state)
        unknown = [key for key in state.get("loaders", {}) if key not in self.train_loaders]
        if unknown:
            raise ValueError(
                f"resume_state holds a loader state for session {unknown[0]!r}, which has no train loader"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])
        for curve, values in state["history"].items():
            self.history[curve] = list(values)
        for key, loader_state in state.get("loaders", {}).items():
            _set_loader_state(self.train_loaders[key], loader_state)
        _set_rng_state(state["rng"])  # last: nothing restored after it may draw random numbers
        self._seconds_before = float(state.get("seconds", 0.0))
        self._clock = time.perf_counter()


# ------------------------------------------------------------------------------------------ RNGs
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


# ------------------------------------------------------------------------------------------ loaders
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


def _to_cpu(value: Any) -> Any:
    """A copy of a nested dict/list structure with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value
