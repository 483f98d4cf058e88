"""Where and with what a training ran: host, device, package versions, git commit (no database access)."""

from __future__ import annotations

import itertools
import logging
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .settings import current_settings

__all__ = [
    "DEGENERATE_COMMENT",
    "degenerate_check",
    "device_used",
    "git_commit",
    "host_name",
    "package_versions",
    "run_info",
]

logger = logging.getLogger(__name__)

#: the packages whose versions determine a trained model's result
PACKAGES = ("visual-sysid", "torch", "numpy", "datajoint")


def host_name() -> str:
    """This machine's host name, as stored in ``host`` columns (at most 255 characters)."""
    return socket.gethostname()[:255]


def package_versions() -> dict[str, str]:
    """Versions of Python and of :data:`PACKAGES` (those installed)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the source checkout this code runs from (``SYSID_GIT_COMMIT`` overrides), or None."""
    configured = current_settings().git_commit
    if configured:
        return configured[:40]
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit[:40] if commit else None


def device_used(model, output: Mapping[str, Any] | None = None) -> str:
    """The device a training actually ran on, as stored in ``TrainedModel.device`` (at most 64 characters).

    The trainer config may say ``"auto"`` or ``"cuda"``; what counts is where the model ended up:
    the trainer's ``output["device"]`` when it reports one, else the device of the model's first
    parameter or buffer (the trainer moves the model in place), else ``"cpu"``. A CUDA device gets
    its index and the GPU's name: ``"cuda:0 (NVIDIA H100 80GB HBM3)"``.

    Args:
        model: the trained ``torch.nn.Module``.
        output: the trainer's output dict.
    """
    import torch

    reported = (output or {}).get("device")
    if reported:
        try:
            device = torch.device(str(reported))
        except RuntimeError:  # not a torch device string: keep what the trainer said
            return str(reported)[:64]
    else:
        tensors = itertools.chain(model.parameters(), model.buffers())
        first = next(tensors, None)
        device = first.device if first is not None else torch.device("cpu")
    if device.type != "cuda":
        return str(device)[:64]
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
    except (RuntimeError, AssertionError):  # CUDA not usable in this process: keep the bare device
        return str(device)[:64]
    return f"cuda:{index} ({name})"[:64]


def run_info(model, output: Mapping[str, Any] | None, seconds: float) -> dict[str, Any]:
    """The columns that say where and with what a training ran (``seconds`` of wall time)."""
    device = device_used(model, output)
    versions = package_versions()
    if device.startswith("cpu"):
        # CPU results depend, at float32 rounding, on the kernels' path and the thread count
        import torch

        from pipeline.kernels import kernel_status

        versions["cpu_kernels"] = kernel_status().get("state", "unknown")
        versions["torch_threads"] = str(torch.get_num_threads())
    return {
        "seconds": seconds,
        "host": host_name(),
        "device": device,
        "package_versions": versions,
        "git_commit": git_commit(),
    }


#: the ``comment`` of a trained model whose predictions are constant on the validation tier
DEGENERATE_COMMENT = (
    "degenerate: constant predictions on the validation tier (every neuron's output is the same for "
    "every image); check lr_init and the regularizer strengths"
)


def degenerate_check(model, dataloaders) -> bool | None:
    """:func:`pipeline.scoring.constant_predictions` on the validation tier; None where loaders cannot tell.

    Loaders that do not yield (images, responses) batches (toy trainers' tensors) cannot be checked.
    """
    from pipeline.scoring import constant_predictions

    try:
        return constant_predictions(model, dataloaders, "validation")
    except (TypeError, ValueError, AttributeError) as error:
        logger.debug("degenerate check skipped: %s", error)
        return None
