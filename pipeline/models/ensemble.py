"""An ensemble of encoders of the same data: the mean of the members' predicted responses.

Labs average several seeds of one model (better predictions; the standard model for MEI work,
Walker et al. 2019, Franke et al. 2022). :class:`EnsembleEncoder` is called exactly like one encoder
(``model(images, data_key=..., behavior=..., pupil_center=...)``), so scoring
(:func:`pipeline.scoring.score_model`), the measures and MEI optimisation take it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pipeline.contracts import resolve_data_key

__all__ = ["EnsembleEncoder", "session_neurons"]


def session_neurons(model: nn.Module) -> dict[str, int]:
    """``{data_key: number of neurons}`` of an encoder (or an ensemble).

    Args:
        model: a :class:`~pipeline.models.FiringRateEncoder`-like module whose ``readout`` is a
            ``ModuleDict`` of per-session readouts with ``outdims``, or an :class:`EnsembleEncoder`.

    Raises:
        TypeError: the model has no per-session readouts to read the sessions from.
    """
    if isinstance(model, EnsembleEncoder):
        return dict(model.n_neurons)
    readout = getattr(model, "readout", None)
    if isinstance(readout, nn.ModuleDict) and len(readout) > 0:
        counts = {}
        for key, module in readout.items():
            outdims = getattr(module, "outdims", None)
            if not isinstance(outdims, int):
                raise TypeError(f"the readout of session {key!r} has no integer 'outdims' (neuron count)")
            counts[key] = outdims
        return counts
    raise TypeError(
        f"cannot read sessions and neuron counts from a {type(model).__name__}: expected an encoder "
        "with a per-session readout (ModuleDict of readouts with 'outdims') or an EnsembleEncoder"
    )


class EnsembleEncoder(nn.Module):
    """The mean of several encoders' outputs; same call signature as one encoder.

    Args:
        members: two or more encoders trained on the same data: the same sessions with the same
            number of neurons each (checked here, so a mismatch fails when the ensemble is built,
            not inside a forward pass). A single member is allowed (the ensemble then equals it).

    Attributes:
        members: the encoders (``nn.ModuleList``); ``eval()``/``to()`` reach every member.
        n_neurons: ``{data_key: N}`` shared by every member.

    The forward pass runs every member on the same inputs and returns the arithmetic mean of their
    ``(B, N)`` outputs (firing rates stay positive). Members keep their own training flags; the
    measures and MEI code put the whole ensemble in eval mode.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if isinstance(members, nn.Module) and not isinstance(members, nn.ModuleList):
            raise TypeError("members must be a sequence of encoders; wrap a single model as [model]")
        if not isinstance(members, Sequence | nn.ModuleList):
            raise TypeError(
                f"members must be a sequence (list/tuple) of encoders, got {type(members).__name__}"
            )
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"member {i} must be a torch.nn.Module, got {type(member).__name__}")
        reference = session_neurons(members[0])
        for i, member in enumerate(members[1:], start=1):
            counts = session_neurons(member)
            if counts != reference:
                raise ValueError(
                    "ensemble members must model the same data (same sessions, same neurons): member 0 has "
                    f"{_describe(reference)}, member {i} has {_describe(counts)}"
                )
        self.members = nn.ModuleList(members)
        self.n_neurons: dict[str, int] = reference

    @property
    def data_keys(self) -> list[str]:
        """The sessions every member knows."""
        return list(self.n_neurons)

    def forward(
        self,
        inputs: torch.Tensor,
        *args,
        data_key: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Mean firing rates ``(B, N)`` of session ``data_key`` over the members.

        Args:
            inputs: images ``(B, C, H, W)``.
            *args: further positional batch fields, passed on (members ignore them).
            data_key: the session; may be omitted when the data has one session.
            **kwargs: passed to every member unchanged (``behavior``, ``pupil_center``, ...).
        """
        data_key = resolve_data_key(self.n_neurons, data_key, owner="ensemble")
        total = None
        for member in self.members:
            out = member(inputs, *args, data_key=data_key, **kwargs)
            total = out if total is None else total + out
        return total / len(self.members)

    def extra_repr(self) -> str:
        return f"{len(self.members)} members, sessions {_describe(self.n_neurons)}"


def _describe(counts: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{key}: {n} neurons" for key, n in counts.items()) + "}"
