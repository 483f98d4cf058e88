"""Tiny dataset / model / trainer functions for fast database tests (no files, milliseconds per epoch).

They follow the nnfabrik conventions and the contracts of docs/INTERFACES.md that the schemas rely
on: the trainer calls ``cb(record)`` after every epoch, ``record.training_state()`` gives a
resumable state and ``resume_state=`` continues from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch


def toy_dataset(seed: int = 0, n_trials: int = 40, n_inputs: int = 5, n_neurons: int = 3) -> dict:
    """Linear-Gaussian data: ``{"train": {"toy": (x, y)}, "validation": {"toy": (x, y)}}``."""
    generator = torch.Generator().manual_seed(1234)  # the data do not depend on the training seed
    weights = torch.randn(n_inputs, n_neurons, generator=generator)
    tiers = {}
    for tier in ("train", "validation"):
        x = torch.randn(n_trials, n_inputs, generator=generator)
        y = x @ weights + 0.1 * torch.randn(n_trials, n_neurons, generator=generator)
        tiers[tier] = {"toy": (x, y)}
    return tiers


def toy_labelled_dataset(label: int | str = 0, **kwargs) -> dict:
    """:func:`toy_dataset` under a label that may be an int or a string (8 and "8": two valid configs)."""
    return toy_dataset(**kwargs)


def toy_model(
    dataloaders=None, seed: int | None = None, data_info=None, bias: bool = True
) -> torch.nn.Module:
    """A linear model sized from the loaders (or from ``data_info = {"n_inputs", "n_neurons"}``)."""
    if dataloaders is not None:
        x, y = dataloaders["train"]["toy"]
        n_inputs, n_neurons = x.shape[1], y.shape[1]
    else:
        n_inputs, n_neurons = data_info["n_inputs"], data_info["n_neurons"]
    torch.manual_seed(0 if seed is None else seed)
    return torch.nn.Linear(n_inputs, n_neurons, bias=bias)


def toy_big_model(dataloaders=None, seed: int | None = None, data_info=None, n_extra: int = 3_000_000):
    """:func:`toy_model` plus a buffer of ``n_extra`` float32 values (a state above the inline limit)."""
    model = toy_model(dataloaders, seed, data_info)
    model.register_buffer("extra", torch.arange(n_extra, dtype=torch.float32))
    return model


@dataclass
class ToyRecord:
    """What the callback receives (a subset of pipeline.training.EpochRecord)."""

    epoch: int
    train_loss: float
    val_correlation: float | None
    lr: float
    seconds: float
    state: dict = field(repr=False, default_factory=dict)

    def training_state(self) -> dict[str, Any]:
        return self.state


def _correlation(output: torch.Tensor, target: torch.Tensor) -> float:
    o = output - output.mean(0)
    t = target - target.mean(0)
    return float(((o * t).sum(0) / (o.norm(dim=0) * t.norm(dim=0) + 1e-12)).mean())


def toy_trainer(
    model,
    dataloaders,
    seed,
    uid=None,
    cb=None,
    resume_state=None,
    epochs: int = 3,
    lr: float = 0.05,
    sleep: float = 0.0,
    fail_at_epoch: int | None = None,
):
    """Full-batch gradient descent for ``epochs`` epochs; ``fail_at_epoch`` raises a RuntimeError there.

    ``output["start_epoch"]`` records where training (re)started.
    """
    torch.manual_seed(seed)
    # plain gradient descent (no torch.optim): its first use imports torch._dynamo, seconds per process
    start_epoch = 0
    history: dict[str, list] = {"train_loss": [], "val_correlation": []}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        start_epoch = int(resume_state["epoch"])
        history = {k: list(v) for k, v in resume_state["history"].items()}
    x, y = dataloaders["train"]["toy"]
    xv, yv = dataloaders["validation"]["toy"]
    for epoch in range(start_epoch + 1, epochs + 1):
        began = time.time()
        if fail_at_epoch is not None and epoch >= fail_at_epoch:
            raise RuntimeError(f"toy trainer failed on purpose at epoch {epoch}")
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= lr * parameter.grad
            val = _correlation(model(xv), yv)
        history["train_loss"].append(float(loss.detach()))
        history["val_correlation"].append(val)
        if sleep:
            time.sleep(sleep)
        state = {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "epoch": epoch,
            "history": {k: list(v) for k, v in history.items()},
        }
        record = ToyRecord(epoch, float(loss.detach()), val, lr, time.time() - began, state)
        if cb is not None and cb(record):
            break
    with torch.no_grad():
        score = _correlation(model(xv), yv)
    output = {**history, "epochs": len(history["train_loss"]), "start_epoch": start_epoch}
    return score, output, model.state_dict()


def interrupting_trainer(
    model, dataloaders, seed, uid=None, cb=None, resume_state=None, stop_at_epoch=1, **config
):
    """``pipeline.training.standard_trainer`` that requests a stop (as SIGTERM would) after ``stop_at_epoch``.

    Only in a fresh run: a resumed run (``resume_state`` given) trains to the end.
    """
    import schemas
    from pipeline.training import standard_trainer

    def callback(record):
        if resume_state is None and record.epoch == stop_at_epoch:
            schemas.request_stop()
        return cb(record) if cb is not None else None

    return standard_trainer(
        model, dataloaders, seed, uid=uid, cb=callback, resume_state=resume_state, **config
    )


def toy_stopping_trainer(
    model, dataloaders, seed, uid=None, cb=None, resume_state=None, stop_at_epoch=1, **config
):
    """:func:`toy_trainer` that requests a stop (as SIGTERM would) after ``stop_at_epoch`` of a fresh run."""
    import schemas

    def callback(record):
        if resume_state is None and record.epoch == stop_at_epoch:
            schemas.request_stop()
        return cb(record) if cb is not None else None

    return toy_trainer(model, dataloaders, seed, uid=uid, cb=callback, resume_state=resume_state, **config)


def toy_flaky_trainer(model, dataloaders, seed, uid=None, cb=None, resume_state=None, marker="", **config):
    """:func:`toy_trainer` that first fails as a lost database connection would, once per ``marker`` file.

    The first call creates the file ``marker`` and raises; later calls train normally.
    """
    from pathlib import Path

    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("(2013, 'Lost connection to MySQL server during query')")
    return toy_trainer(model, dataloaders, seed, uid=uid, cb=cb, resume_state=resume_state, **config)


def toy_hijacked_trainer(
    model, dataloaders, seed, uid=None, cb=None, resume_state=None, hijack_at_epoch=1, **config
):
    """:func:`toy_trainer` whose job is taken over by "another worker" after ``hijack_at_epoch``.

    At that epoch the job row is rewritten as reserved by host ``another-host``, pid 1 (what a
    sweep that re-pended the job and a second worker's reservation leave), before the callback runs.
    """
    import schemas

    def callback(record):
        if record.epoch == hijack_at_epoch:
            jobs = schemas.TrainedModel().jobs
            key = {name: uid[name] for name in jobs.primary_key}
            jobs.update1({**key, "host": "another-host", "pid": 1})
        return cb(record) if cb is not None else None

    return toy_trainer(model, dataloaders, seed, uid=uid, cb=callback, resume_state=resume_state, **config)
