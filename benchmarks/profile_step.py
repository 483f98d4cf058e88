"""Per-operation profile of one SOTA training step (forward, backward, optimiser) with torch.profiler.

Builds the Sensorium 2022 SOTA model with our builder on the real subset (neurons tiled as in
``bench_throughput.py``), puts it in channels-last memory as ``standard_trainer`` does, keeps freed
memory as the trainer does, runs ``--warmup`` steps, then profiles ``--steps`` steps and prints the
self time per step of each group of operations (forward and backward apart), the time outside
the recorded operations (Python, the autograd engine), and the wall time per step measured
without the profiler. ``--kernels off`` profiles PyTorch's own operations instead of
:mod:`pipeline.kernels` (``SYSID_CPU_KERNELS=0``).

On this machine the profiler itself stretches a step 3-4x (its per-operation bookkeeping), so the
table's shares matter more than its milliseconds; ``--ops`` therefore also times the step's
operations one by one at the SOTA shapes without the profiler (best of 5; forward and backward;
oneDNN and PyTorch against the kernels of :mod:`pipeline.kernels`).

Usage: ``python benchmarks/profile_step.py [--neurons 1000] [--batch-size 128] [--threads 2]
[--steps 4] [--warmup 2] [--kernels on|off] [--ops]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_throughput import REAL, tiled_dataset, train_image_ids  # noqa: E402


def _group(name: str, shapes: list) -> str:
    """The row an operation's self time goes to."""
    weight = shapes[1] if len(shapes) > 1 else []
    if name == "aten::convolution_backward":
        weight = shapes[2] if len(shapes) > 2 else []
    kind = ""
    if len(weight) == 4:
        kind = "depthwise 7x7 conv" if weight[1] == 1 and weight[2] > 1 else "1x1 conv"
        if weight[1] == 1 and weight[2] == 9:
            kind = "input 9x9 conv"
    table = {
        "aten::mkldnn_convolution": f"{kind} forward",
        "aten::convolution_backward": f"{kind} backward (oneDNN)",
        "aten::native_batch_norm": "batch norm forward",
        "aten::native_batch_norm_backward": "batch norm backward",
        "aten::elu": "ELU forward",
        "aten::elu_backward": "ELU backward",
        "aten::grid_sampler_2d": "readout grid_sample forward",
        "aten::grid_sampler_2d_backward": "readout grid_sample backward",
    }
    if name in table:
        return table[name]
    if "_DepthwiseConv2dBackward" in name:
        return "depthwise weight gradient (sysid kernel)"
    if "_SampleAndWeightBackward" in name:
        return "readout backward (sysid kernel)"
    if "_SampleAndWeight" in name:
        return "readout forward (sysid kernel)"
    if name.startswith("Optimizer.") or "adam" in name.lower():
        return "Adam step"
    if name in ("aten::fill_", "aten::zero_", "aten::copy_", "aten::add_", "aten::zeros", "aten::empty"):
        return "fills, copies, gradient accumulation"
    if name.startswith("autograd::engine"):
        return "autograd engine nodes"
    if name in (
        "aten::mul",
        "aten::sum",
        "aten::add",
        "aten::einsum",
        "aten::bmm",
        "aten::mm",
        "aten::addmm",
    ):
        return "readout product and sum, grid predictor, loss (mul/sum/mm)"
    return "other operations"


def _best_ms(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def time_operations(batch: int, neurons: int) -> list[tuple[str, float, float]]:
    """(operation, ms ours, ms PyTorch/oneDNN) per call at the SOTA core's hidden-layer shapes."""
    import torch.nn.functional as F

    from pipeline import kernels

    channels, height, width = 64, 28, 56
    cl = torch.channels_last
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=cl)
    grad = torch.randn_like(x)
    pointwise = torch.randn(channels, channels, 1, 1).contiguous(memory_format=cl)
    depthwise = torch.randn(channels, 1, 7, 7)
    conv_bwd = torch.ops.aten.convolution_backward
    dw_args = (grad, x, depthwise, None, [1, 1], [3, 3], [1, 1], False, [0, 0], channels)
    pw_args = (grad, x, pointwise, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    bn = torch.nn.BatchNorm2d(channels).to(memory_format=cl)
    xg = x.clone().requires_grad_()

    def bn_elu_fwd_bwd() -> None:
        xg.grad = None
        F.elu(bn(xg)).backward(grad)

    rows = [
        ("1x1 conv forward", None, _best_ms(lambda: F.conv2d(x, pointwise))),
        (
            "1x1 conv backward (input + weight)",
            None,
            _best_ms(lambda: conv_bwd(*pw_args, [True, True, False])),
        ),
        ("depthwise 7x7 forward", None, _best_ms(lambda: F.conv2d(x, depthwise, None, 1, 3, 1, channels))),
        ("depthwise 7x7 input gradient", None, _best_ms(lambda: conv_bwd(*dw_args, [True, False, False]))),
        (
            "depthwise 7x7 weight gradient",
            _best_ms(lambda: kernels._depthwise_weight_grad(x, grad, depthwise.shape, (3, 3), (1, 1)))
            if kernels.kernels_enabled()
            else None,
            _best_ms(lambda: conv_bwd(*dw_args, [False, True, False])),
        ),
        ("batch norm + ELU forward and backward", None, _best_ms(bn_elu_fwd_bwd)),
    ]
    grid = (torch.rand(batch, neurons, 1, 2) * 0.6 - 0.3).requires_grad_()
    features = torch.randn(1, channels, neurons, requires_grad=True)
    xr = x.clone().requires_grad_()
    dy = torch.randn(batch, neurons)

    def readout(fused: bool):
        def run() -> None:
            xr.grad = grid.grad = features.grad = None
            if fused:
                y = kernels.sample_and_weight(xr, grid, features)
            else:
                y = (F.grid_sample(xr, grid.contiguous(), align_corners=True).squeeze(-1) * features).sum(1)
            y.backward(dy)

        return run

    rows.append(
        (
            f"Gaussian readout forward and backward, {neurons} neurons",
            _best_ms(readout(True)) if kernels.kernels_enabled() else None,
            _best_ms(readout(False)),
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=REAL)
    parser.add_argument("--neurons", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kernels", choices=["on", "off"], default="on")
    parser.add_argument("--ops", action="store_true", help="also time the operations one by one")
    args = parser.parse_args()
    if args.kernels == "off":
        os.environ["SYSID_CPU_KERNELS"] = "0"
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from torch.profiler import ProfilerActivity, profile

    from pipeline.data import static_loaders
    from pipeline.kernels import kernel_status
    from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG, stacked_core_full_gauss_readout
    from pipeline.training.cpu_memory import reuse_freed_memory

    with tempfile.TemporaryDirectory() as tmp:
        path = tiled_dataset(args.path, args.neurons, Path(tmp))
        n_batches = args.steps + args.warmup
        loaders = static_loaders(
            [str(path)],
            batch_size=args.batch_size,
            seed=42,
            normalize=True,
            cache_dir=str(Path(tmp) / "cache"),
            image_ids=[train_image_ids(path, n_batches * args.batch_size)],
        )
        model = stacked_core_full_gauss_readout(loaders, seed=42, **SENSORIUM_SOTA_MODEL_CONFIG)
    model.to(memory_format=torch.channels_last).train()
    key = next(iter(loaders["train"]))
    batches = list(loaders["train"][key])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.009)

    def step(batch) -> None:
        out = model(batch[0], data_key=key)
        loss = torch.nn.functional.poisson_nll_loss(out, batch[1], log_input=False, reduction="sum")
        loss = loss + model.regularizer(data_key=key)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with reuse_freed_memory(True):
        for batch in batches[: args.warmup]:
            step(batch)
        start = time.perf_counter()
        for batch in batches[args.warmup : n_batches]:
            step(batch)
        wall = (time.perf_counter() - start) / args.steps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            for batch in batches[args.warmup : n_batches]:
                step(batch)
            profiled_wall = (time.perf_counter() - t0) / args.steps
    rows: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        rows[_group(event.key, event.input_shapes)] += event.self_cpu_time_total / 1e3 / args.steps
    recorded = sum(rows.values())
    rows["outside recorded operations (Python, engine)"] = max(profiled_wall * 1e3 - recorded, 0.0)
    total = sum(rows.values())
    print(
        f"SOTA step, {args.neurons} neurons, batch {args.batch_size}, {args.threads} threads, channels-last, "
        f"kernels {kernel_status().get('state')}: {wall:.3f} s per step ({profiled_wall:.3f} s under the profiler)"
    )
    print("| operations (self time) | ms per step | share |")
    print("|---|---:|---:|")
    for name, ms in sorted(rows.items(), key=lambda kv: -kv[1]):
        if ms >= 0.5:
            print(f"| {name} | {ms:.0f} | {100 * ms / total:.0f} % |")
    if args.ops:
        from pipeline.training.cpu_memory import reuse_freed_memory

        with reuse_freed_memory(True):
            rows = time_operations(args.batch_size, args.neurons)
        print(
            f"\nOperations one by one (batch {args.batch_size}, 64 x 28 x 56 features, ms per call, best of 5):"
        )
        print("| operation | ours (kernel) | PyTorch / oneDNN | ratio |")
        print("|---|---:|---:|---:|")
        for name, ours, reference in rows:
            if ours is None:
                print(f"| {name} | (same) | {reference:.1f} | 1 |")
            else:
                print(f"| {name} | {ours:.1f} | {reference:.1f} | {reference / ours:.1f}x |")


if __name__ == "__main__":
    main()
