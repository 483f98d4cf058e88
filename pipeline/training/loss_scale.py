"""The trial count in sensorium's loss scale ``sqrt(n_trials / batch_size)``.

sensorium multiplies each batch's summed Poisson loss by ``sqrt(len(loader.dataset) / batch size)``.
Its loader's dataset is the whole session, so ``n_trials`` counts the trials of *every* tier, not
only the training ones: that is what the published regularizer strengths (``gamma_readout``,
``gamma_input``) were tuned against, and the default here (``"all"``). ``"train"`` counts only the
trials the train loader iterates — the size of the data the loss is actually summed over — which
weighs the regularizers relatively more (on the full Lurz et al. 2021 session by ~15%).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LOSS_SCALE_TRIALS", "loss_scale_trials"]

#: accepted values of the trainer's ``loss_scale_trials`` argument
LOSS_SCALE_TRIALS = ("all", "train")


def loss_scale_trials(loader: Any, trials: str = "all") -> int:
    """The ``n_trials`` of ``sqrt(n_trials / batch size)`` for one session's train loader.

    Args:
        loader: the session's train loader: ours (``loader.dataset.session_trials`` counts the
            session's trials over all tiers, ``len(loader.dataset)`` the train tier) or any other
            (e.g. sensorium's ``DataLoader`` over the whole session with a subset sampler).
        trials: ``"all"`` (sensorium: every trial of the session) or ``"train"`` (the trials the
            loader iterates).

    Raises:
        ValueError: an unknown ``trials`` value.
    """
    if trials not in LOSS_SCALE_TRIALS:
        raise ValueError(f"loss_scale_trials must be one of {LOSS_SCALE_TRIALS}, got {trials!r}")
    dataset = loader.dataset
    if trials == "all":
        session = getattr(dataset, "session_trials", None)
        return int(session) if session is not None else len(dataset)
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "__len__"):
        return len(sampler)  # a subset sampler over a whole-session dataset
    return len(dataset)
