"""Fused CPU kernels for the two training hot spots that oneDNN and ATen leave slow.

* The weight gradient of a depthwise convolution (the SOTA core's 7 x 7 ``spatial_conv``): oneDNN
  computes it at ~25 GFLOP/s on channels-last tensors, a third of a training step's convolution
  time; :func:`depthwise_conv2d` keeps oneDNN for the forward pass and the input gradient and
  computes the weight gradient with a loop that keeps 16 channels in one register.
* The Gaussian readout's sampling (``grid_sample`` followed by the channel-weighted sum):
  :func:`sample_and_weight` reads the four bilinear corners of each neuron's position in
  channels-last features and takes the dot product with the neuron's channel weights in one pass,
  without the (B, C, N) tensor in between, and scatters the gradients back in one pass.

The kernels are plain C (``cpu_kernels.c``, no PyTorch headers), compiled on first use with the
machine's C compiler (``$CC`` or ``cc``, ``-O3 -march=native -fopenmp``) into the cache folder
(``$SYSID_CACHE_DIR/kernels``, else the user cache folder), under a name that hashes the source,
the flags, the compiler and the CPU, and loaded with :mod:`ctypes`. Built with ``-fopenmp``, the
library binds to the OpenMP runtime PyTorch has already loaded (same soname), so the kernels split
the batch over PyTorch's own ``torch.get_num_threads()`` threads rather than adding threads. Without a compiler (or with
``SYSID_CPU_KERNELS=0``) every caller uses the PyTorch operations instead; the results agree to
float32 rounding (the sums run in another order), which the tests check against ``F.conv2d``'s and
``F.grid_sample``'s gradients. The kernels are first-order only (no double backward) and are not
used under ``torch.func`` transforms.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pipeline.data.cache import cache_root

__all__ = [
    "depthwise_conv2d",
    "kernel_status",
    "kernels_enabled",
    "sample_and_weight",
]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC")
_OFF = {"0", "false", "off", "no"}
_COMPILE_TIMEOUT_S = 120


def _cache_dir() -> Path:
    return cache_root()[0] / "kernels"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags.strip()}"


def _compile(compiler: str, extra: Sequence[str], target: Path) -> str | None:
    """Build the library at ``target`` (atomically); None on success, else the compiler's complaint."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as error:  # e.g. a read-only cache folder
        return f"cannot write {target.parent}: {error}"
    try:
        done = subprocess.run(
            [compiler, *_FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=_COMPILE_TIMEOUT_S,
        )
        if done.returncode != 0:
            return (done.stderr or done.stdout).strip()[-500:]
        os.replace(tmp, target)  # concurrent workers may build the same file: the last one wins
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_status: dict[str, str] = {}


#: flag sets tried in order: native vector instructions and PyTorch's OpenMP threads first; a
#: compiler without OpenMP (e.g. Apple's clang) still gives correct, single-threaded kernels
_VARIANTS = (("-fopenmp", "-march=native"), ("-fopenmp",), ())


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (the reason goes to :func:`kernel_status`)."""
    compiler = os.environ.get("CC") or "cc"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        compiler_id = version.stdout.splitlines()[0] if version.stdout else compiler
    except (OSError, subprocess.SubprocessError) as error:
        _status.update(state="unavailable", reason=f"no C compiler ({compiler}): {error}")
        logger.info("CPU kernels unavailable, using PyTorch's operations: %s", _status["reason"])
        return None
    source = SOURCE.read_bytes()
    errors = []
    for extra in _VARIANTS:
        flags = " ".join(_FLAGS + extra)
        key = b"\0".join([source, flags.encode(), compiler_id.encode(), _cpu_signature().encode()])
        target = _cache_dir() / f"cpu_kernels-{hashlib.sha256(key).hexdigest()[:16]}.so"
        if not target.exists():
            error = _compile(compiler, extra, target)
            if error is not None:
                errors.append(f"{flags}: {error}")
                continue
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as error:
            errors.append(f"{target}: {error}")
            continue
        _declare(lib)
        _status.update(state="loaded", path=str(target), flags=flags)
        return lib
    _status.update(state="unavailable", reason="; ".join(errors))
    logger.warning("CPU kernels could not be built, using PyTorch's operations: %s", _status["reason"])
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.depthwise_weight_grad.argtypes = [p, p, p, p] + [i] * 13
    lib.readout_forward.argtypes = [p, p, p, p] + [i] * 6
    lib.readout_backward.argtypes = [p] * 7 + [i] * 6
    for fn in (lib.depthwise_weight_grad, lib.readout_forward, lib.readout_backward):
        fn.restype = None


def _switched_off() -> bool:
    return os.environ.get("SYSID_CPU_KERNELS", "1").strip().lower() in _OFF


def kernels_enabled() -> bool:
    """True when the kernels are switched on (``SYSID_CPU_KERNELS``, default on) and built."""
    return not _switched_off() and _library() is not None


def kernel_status() -> dict[str, str]:
    """Diagnostics: ``state`` (loaded / unavailable / off), the library's ``path`` or the ``reason``."""
    if _switched_off():
        return {"state": "off", "reason": "SYSID_CPU_KERNELS is off"}
    _library()
    return dict(_status)


def _functorch_active() -> bool:
    try:
        return bool(torch._C._are_functorch_transforms_active())
    except AttributeError:  # pragma: no cover - older torch
        return False


def _cpu_autocast() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        return bool(torch.is_autocast_cpu_enabled())


def _applies(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors, outside autocast and ``torch.func`` transforms, kernels on and built."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not _cpu_autocast()
        and not _functorch_active()
        and kernels_enabled()
    )


def _parts(batch: int) -> int:
    """Slices of the batch, one per thread of PyTorch's pool (the kernels run on the same threads)."""
    return max(1, min(torch.get_num_threads(), batch))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> a C-contiguous (B, H, W, C) view of channels-last memory (copied if needed)."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------------
# depthwise convolution


def _depthwise_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, weight_shape, padding, dilation
) -> torch.Tensor:
    lib = _library()
    xs, gs = _nhwc(x), _nhwc(grad)
    batch, height, width, channels = xs.shape
    out_h, out_w = gs.shape[1:3]
    kh, kw = weight_shape[2:]
    parts = _parts(batch)
    sums = torch.zeros(parts, kh * kw * channels, dtype=torch.float64)
    scratch = torch.empty(parts, kh * kw * channels, dtype=torch.float32)
    lib.depthwise_weight_grad(
        _ptr(xs), _ptr(gs), _ptr(sums), _ptr(scratch), batch, parts, height, width, channels,
        out_h, out_w, kh, kw, padding[0], padding[1], dilation[0], dilation[1],
    )  # fmt: skip
    return sums.sum(0).to(torch.float32).view(kh, kw, channels).permute(2, 0, 1).unsqueeze(1).contiguous()


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        # the kernel takes float32 gradients; any other dtype gets oneDNN's weight gradient too
        fused_w = need_w and grad.dtype == torch.float32
        grad_x = grad_w = grad_b = None
        if need_x or need_b or (need_w and not fused_w):
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1],
                list(ctx.padding), list(ctx.dilation), False, [0, 0], weight.shape[0],
                [need_x, need_w and not fused_w, need_b],
            )  # fmt: skip
        if fused_w:
            grad_w = _depthwise_weight_grad(x, grad, weight.shape, ctx.padding, ctx.dilation)
        return grad_x, grad_w, grad_b, None, None


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` with the fast weight gradient.

    Args:
        x: (B, C, H, W) float32 on the CPU (channels-last memory avoids a copy).
        weight: (C, 1, KH, KW), one filter per channel.
        bias: (C,) or None.
        padding, dilation: per spatial axis; stride is 1.

    Returns:
        (B, C, H', W'), as ``F.conv2d``. Falls back to ``F.conv2d`` where the kernel does not apply
        (another device or dtype, kernels off or not built, ``torch.func`` transforms).
    """
    groups = weight.shape[0]
    if x.dim() != 4 or weight.shape[1] != 1 or x.shape[1] != groups:
        raise ValueError(
            f"depthwise_conv2d: needs x (B, C, H, W) and weight (C, 1, KH, KW) with the same C, "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not _applies(*tensors):
        return F.conv2d(x, weight, bias, 1, padding, dilation, groups)
    return _DepthwiseConv2d.apply(x, weight, bias, tuple(padding), tuple(dilation))


# ---------------------------------------------------------------------------------------------------
# Gaussian readout sampling


class _SampleAndWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, features):
        lib = _library()
        batch, channels, height, width = x.shape
        neurons = grid.shape[1]
        xs = _nhwc(x)
        positions = grid.reshape(batch, neurons, 2).contiguous()
        weights = features.reshape(channels, neurons).t().contiguous()  # (N, C)
        y = torch.empty(batch, neurons, dtype=torch.float32)
        lib.readout_forward(
            _ptr(xs),
            _ptr(positions),
            _ptr(weights),
            _ptr(y),
            batch,
            _parts(batch),
            height,
            width,
            channels,
            neurons,
        )
        ctx.save_for_backward(xs, positions, weights)
        ctx.grid_shape = grid.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        lib = _library()
        xs, positions, weights = ctx.saved_tensors
        batch, height, width, channels = xs.shape
        neurons = positions.shape[1]
        need_x, need_grid, need_features = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_x = torch.zeros_like(xs) if need_x else None
        grad_grid = torch.empty_like(positions) if need_grid else None
        parts = _parts(batch)
        grad_w = torch.zeros(parts, neurons, channels) if need_features else None
        lib.readout_backward(
            _ptr(xs), _ptr(positions), _ptr(weights), _ptr(grad), _ptr(grad_x), _ptr(grad_grid),
            _ptr(grad_w), batch, parts, height, width, channels, neurons,
        )  # fmt: skip
        return (
            grad_x.permute(0, 3, 1, 2) if grad_x is not None else None,
            grad_grid.view(ctx.grid_shape) if grad_grid is not None else None,
            grad_w.sum(0).t().reshape(1, channels, neurons) if grad_w is not None else None,
        )


def sample_and_weight(
    x: torch.Tensor, grid: torch.Tensor, features: torch.Tensor, align_corners: bool = True
) -> torch.Tensor:
    """Sample ``x`` at one position per neuron and take the channel-weighted sum.

    Equal to ``(F.grid_sample(x, grid, align_corners=align_corners).squeeze(-1) * features).sum(1)``
    (bilinear, zero padding), computed by the fused kernel where it applies (float32 on the CPU,
    ``align_corners=True``).

    Args:
        x: core features (B, C, H, W).
        grid: positions (B, N, 1, 2) in grid units (x along the width, y along the height).
        features: channel weights (1, C, N).
        align_corners: ``F.grid_sample``'s convention.

    Returns:
        (B, N).
    """
    fused = (
        align_corners
        and x.dim() == 4
        and x.shape[0] > 0
        and grid.dim() == 4
        and grid.shape[0] == x.shape[0]
        and grid.shape[2:] == (1, 2)
        and features.numel() == x.shape[1] * grid.shape[1]
    )
    if fused and _applies(x, grid, features):
        return _SampleAndWeight.apply(x, grid, features)
    sampled = F.grid_sample(x, grid.contiguous(), align_corners=align_corners)  # (B, C, N, 1)
    return (sampled.squeeze(-1) * features).sum(1)
