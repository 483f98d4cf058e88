"""The encoder: core + per-session readout (+ shifter, + modulator) → positive firing rates."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.contracts import resolve_data_key

__all__ = ["FiringRateEncoder"]

# Batch fields that reach forward() through ``**batch._asdict()`` calls; they are model inputs or
# targets, not readout options, so they are not passed on to the readout.
_BATCH_FIELDS = frozenset({"images", "inputs", "responses", "targets"})


def _as_tensor(value: torch.Tensor | float, like: torch.Tensor | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if like is None:
        return torch.as_tensor(float(value))
    return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


class FiringRateEncoder(nn.Module):
    """Predict every neuron's firing rate from an image: ``elu(readout(core(x)) + elu_offset) + 1``.

    Args:
        core: maps images ``(B, C, H, W)`` to feature maps ``(B, c, h, w)``; must have ``regularizer()``.
        readout: a multi-session readout (``ModuleDict`` keyed by data_key) with
            ``forward(x, data_key=..., shift=..., **kwargs) -> (B, N)`` and ``regularizer(data_key, ...)``.
        shifter: optional ``ModuleDict`` of per-session eye-position → shift networks; when present
            every forward pass needs ``pupil_center`` ``(B, 2)``.
        modulator: optional ``ModuleDict`` of per-session behaviour → gain networks, applied to the
            readout output before the non-linearity; when present every forward pass needs ``behavior``.
        elu_offset: added to the readout output before the ELU (stored as ``self.offset`` as in
            neuralpredictors).

    The output is > 0 everywhere (ELU ≥ -1, plus 1), so it can be read as a Poisson rate.
    """

    def __init__(
        self,
        core: nn.Module,
        readout: nn.Module,
        shifter: nn.Module | None = None,
        modulator: nn.Module | None = None,
        elu_offset: float = 0.0,
    ):
        super().__init__()
        for name, module in (("core", core), ("readout", readout)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
        for name, module in (("shifter", shifter), ("modulator", modulator)):
            if module is not None and not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module or None, got {type(module).__name__}")
        self.core = core
        self.readout = readout
        self.shifter = shifter
        self.modulator = modulator
        self.offset = float(elu_offset)
        #: the core is frozen (see :meth:`freeze_core`): no gradient, no regularizer, eval mode
        self.core_frozen = False
        #: the core's own learning rate (see :meth:`parameter_groups`); None: the trainer's
        self.core_lr: float | None = None

    def freeze_core(self, frozen: bool = True) -> FiringRateEncoder:
        """Freeze (or unfreeze) the core, for transfer learning with a pretrained core.

        A frozen core gets no gradient (its parameters have ``requires_grad=False`` and its output is
        detached), adds no regularizer, and stays in eval mode when the model is put in train mode, so
        its batch-norm running statistics are those of the data it was trained on. Not part of the
        state dict: a loaded model is unfrozen.

        Returns:
            The model itself.
        """
        self.core_frozen = bool(frozen)
        for parameter in self.core.parameters():
            parameter.requires_grad_(not self.core_frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> FiringRateEncoder:
        """``nn.Module.train``, except that a frozen core stays in eval mode."""
        super().train(mode)
        if self.core_frozen:
            self.core.eval()
        return self

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups: the core at ``core_lr`` (when set), the rest at ``lr``.

        Frozen-core parameters are left out; with neither a frozen core nor ``core_lr``, one group of
        every parameter in ``parameters()`` order (what ``Adam(model.parameters())`` sees). The trainer (``standard_trainer``) builds its Adam
        optimiser from these groups.
        """
        if not self.core_frozen and self.core_lr is None:  # one group, in parameters() order
            return [{"params": list(self.parameters()), "lr": lr}]
        core_ids = {id(p) for p in self.core.parameters()}
        rest = [p for p in self.parameters() if id(p) not in core_ids and p.requires_grad]
        if self.core_frozen:
            return [{"params": rest, "lr": lr}]
        core = [p for p in self.core.parameters() if p.requires_grad]
        core_lr = float(self.core_lr)
        return [{"params": rest, "lr": lr}, {"params": core, "lr": core_lr}]

    @property
    def data_keys(self) -> list[str]:
        """The sessions the readout knows."""
        return list(self.readout.keys()) if isinstance(self.readout, nn.ModuleDict) else []

    def _resolve_data_key(self, data_key: str | None) -> str | None:
        keys = self.data_keys
        if not keys:  # a single (non-dict) readout: data_key is irrelevant
            return data_key
        return resolve_data_key(keys, data_key, "model")

    def forward(
        self,
        inputs: torch.Tensor,
        *args,
        targets: torch.Tensor | None = None,
        data_key: str | None = None,
        behavior: torch.Tensor | None = None,
        pupil_center: torch.Tensor | None = None,
        trial_idx: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
        detach_core: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """Firing rates ``(B, N)`` of session ``data_key`` for images ``inputs`` ``(B, C, H, W)``.

        Args:
            inputs: the images (with behaviour / eye-position channels when the data has them).
            *args: further positional batch fields (responses, ...), ignored.
            targets: ignored (accepted so that whole batches can be passed).
            data_key: the session; may be omitted when the model has one session.
            behavior: ``(B, n_behavior)``, required when the model has a modulator.
            pupil_center: ``(B, 2)``, required when the model has a shifter.
            trial_idx: optional ``(B,)`` passed to the shifter.
            shift: ``(B, 2)`` readout shift used when the model has no shifter (the shifter's output
                takes its place otherwise).
            detach_core: if True, no gradient flows into the core.
            **kwargs: readout options such as ``sample=`` and ``out_idx=`` are passed on; batch fields
                (``images``, ``responses``) are dropped.
        """
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor of images (B, C, H, W), got {type(inputs).__name__}")
        data_key = self._resolve_data_key(data_key)
        if self.core_frozen and self.training:  # no graph through a frozen core while training
            with torch.no_grad():
                x = self.core(inputs)
        else:
            x = self.core(inputs)
        if detach_core:
            x = x.detach()

        if self.shifter is not None:
            if pupil_center is None:
                raise ValueError(
                    "this model has a shifter, so forward() needs pupil_center (B, 2); load the data with "
                    "include_eye_position=True and pass pupil_center=batch.pupil_center"
                )
            shift = self.shifter[resolve_data_key(self.shifter.keys(), data_key, "shifter")](
                pupil_center, trial_idx
            )

        readout_kwargs = {k: v for k, v in kwargs.items() if k not in _BATCH_FIELDS}
        x = self.readout(x, data_key=data_key, shift=shift, **readout_kwargs)

        if self.modulator is not None:
            if behavior is None:
                raise ValueError(
                    "this model has a modulator, so forward() needs behavior (B, n_behavior); load the data "
                    "with include_behavior=True and pass behavior=batch.behavior"
                )
            x = self.modulator[resolve_data_key(self.modulator.keys(), data_key, "modulator")](
                x, behavior=behavior
            )

        return F.elu(x + self.offset) + 1

    def regularizer(
        self,
        data_key: str | None = None,
        reduction: str | None = "sum",
        average: bool | None = None,
        detach_core: bool = False,
    ) -> torch.Tensor:
        """Core + readout + shifter + modulator regularisation for session ``data_key`` (a scalar).

        Args:
            data_key: the session; None with one session means that session, and None with several
                sessions sums the per-session terms over all of them (the core counts once).
            reduction: passed to the readout's regularizer ("sum", "mean" or None).
            average: deprecated alias of ``reduction`` understood by the readouts.
            detach_core: if True the core term is detached (it adds to the value, not the gradient).
        """
        keys = self.data_keys
        if data_key is None and len(keys) > 1:
            sessions = keys
        else:
            sessions = [self._resolve_data_key(data_key)]
        core_reg = 0.0 if self.core_frozen else self.core.regularizer()
        if detach_core and isinstance(core_reg, torch.Tensor):
            core_reg = core_reg.detach()
        reg = None
        for key in sessions:
            if keys:
                term = self.readout.regularizer(data_key=key, reduction=reduction, average=average)
            else:  # a single readout (not keyed by session)
                term = self.readout.regularizer(reduction=reduction, average=average)
            if self.shifter is not None:
                term = term + self.shifter.regularizer(data_key=key)
            if self.modulator is not None:
                term = term + self.modulator.regularizer(data_key=key)
            reg = term if reg is None else reg + term
        like = reg if isinstance(reg, torch.Tensor) else None
        return _as_tensor(core_reg, like) + reg
