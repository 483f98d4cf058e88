"""The settings of an MEI optimisation, validated (unknown keys refused) so they can be stored by hash."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["MEIConfig", "MEIConfigError", "mei_config"]


class MEIConfigError(ValueError):
    """An MEI method config that is not valid (unknown key, wrong type, out-of-range value)."""


class MEIConfig(BaseModel):
    """How MEIs are optimised (Walker et al. 2019): projected gradient ascent on the input image.

    All pixel quantities are in the data's normalised units (what the model sees: ``(x - mean) / std``
    of the training images).

    Attributes:
        objective: ``"excite"`` maximises the neuron's predicted response (the most exciting input);
            ``"inhibit"`` minimises it (the most inhibitory input).
        norm: L2 norm of every image (over all channels and pixels); None: no norm constraint.
            A fixed norm makes MEIs of different neurons and models comparable (the same "contrast").
        norm_mode: ``"fixed"`` rescales every image to exactly ``norm`` after each step; ``"bound"``
            only scales down images whose norm exceeds it.
        pixel_range: ``"data"`` clips pixels to the data's normalised range (the caller passes it,
            e.g. from the dataset statistics: (0 − mean)/std … (255 − mean)/std); ``[low, high]``
            clips to that range; None: no clipping.
        optimizer: ``"sgd"`` (plain gradient ascent with ``lr``) or ``"adam"``.
        lr: step size.
        blur_sigma: standard deviation in pixels of the Gaussian blur applied to the gradient
            (preconditioning: suppresses high spatial frequencies the neuron is insensitive to); 0 = off.
        jitter: each step the image is shifted (circularly) by up to ``jitter`` pixels in x and y
            before the model sees it; 0 = off.
        init_std: std of the initial Gaussian noise (rescaled to ``norm`` when the norm is fixed).
        max_steps: step budget.
        min_steps: no image stops before this many steps (default 50, or ``max_steps`` when smaller).
        patience: an image stops once its objective has not improved by more than ``tol``
            (relative to its best value) for this many steps.
        tol: relative improvement that counts as progress.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Literal["excite", "inhibit"] = "excite"
    norm: float | None = Field(default=10.0, gt=0)
    norm_mode: Literal["fixed", "bound"] = "fixed"
    pixel_range: Literal["data"] | tuple[float, float] | None = "data"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=1.0, gt=0)
    blur_sigma: float = Field(default=1.0, ge=0, le=50)
    jitter: int = Field(default=0, ge=0, le=64)
    init_std: float = Field(default=0.1, gt=0)
    max_steps: int = Field(default=500, ge=1, le=1_000_000)
    min_steps: int = Field(default=50, ge=0)
    patience: int = Field(default=30, ge=1)
    tol: float = Field(default=1e-4, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_min_steps(cls, data: Any) -> Any:
        # a small step budget without min_steps means "stop within the budget", not an error
        if isinstance(data, Mapping) and "min_steps" not in data and isinstance(data.get("max_steps"), int):
            data = {**data, "min_steps": min(cls.model_fields["min_steps"].default, data["max_steps"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> MEIConfig:
        if isinstance(self.pixel_range, tuple) and not self.pixel_range[0] < self.pixel_range[1]:
            raise ValueError(f"pixel_range must be [low, high] with low < high, got {list(self.pixel_range)}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        return self

    @property
    def sign(self) -> float:
        """+1 to maximise the response, −1 to minimise it."""
        return 1.0 if self.objective == "excite" else -1.0


def mei_config(config: MEIConfig | Mapping[str, Any] | None = None) -> MEIConfig:
    """Validate an MEI config given as an :class:`MEIConfig`, a mapping (e.g. a stored JSON config) or None.

    Raises:
        MEIConfigError: unknown keys, wrong types or out-of-range values (the message names each).
    """
    if config is None:
        return MEIConfig()
    if isinstance(config, MEIConfig):
        return config
    if not isinstance(config, Mapping):
        raise MEIConfigError(f"an MEI config must be a mapping of settings, got {type(config).__name__}")
    try:
        return MEIConfig.model_validate(dict(config))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
        raise MEIConfigError(
            f"invalid MEI config: {problems} (accepted keys: {sorted(MEIConfig.model_fields)})"
        ) from None
