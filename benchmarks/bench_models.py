"""Forward + backward time and peak memory of our core and readouts beside neuralpredictors 0.3.0.

Each (module, implementation) case runs in its own subprocess so that its peak memory is its own:
the subprocess builds the module and its input, resets the kernel's resident-set high-water mark,
runs one warm-up step, then ``--repeats`` timed training steps (forward, then backward of a fixed random
output gradient), and reports the best (minimum) forward and backward times (the machine may be shared: the
minimum is the least disturbed) and the peak resident memory
above the level before the timed steps (gradients are freed before each step, so they count). The main process prints one table with our/peer ratios.

Shapes default to the readout tutorial's: core input 1 x 144 x 256, core output (readout input)
64 x 144 x 256, 8372 neurons; batch 8. Readout inputs require gradients, as they do inside a model
(the gradient flows on into the core).

    python benchmarks/bench_models.py              # tutorial shapes (several GB for FullFactorized2d)
    python benchmarks/bench_models.py --quick      # small shapes, seconds
    python benchmarks/bench_models.py --neurons 2000 --batch 4 --cases factorized
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("core", "factorized", "gaussian2d", "full_gaussian2d", "point_pooled2d")
# the goal for FullFactorized2d: its backward pass takes at most this many times its forward
FACTORIZED_MAX_BWD_FWD = 2.0
# the readout tutorial's shapes (the defaults), at which the goals are set
TUTORIAL_SIZES = dict(batch=8, channels=64, height=144, width=256, neurons=8372)


# ------------------------------------------------------------------------------------ measuring
def _rss_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None where it does not exist."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _build(case: str, impl: str, sizes: dict):
    """The module of ``case`` from implementation ``impl`` ("ours"/"peer") and its input."""
    import torch

    if impl == "peer":
        sys.path.insert(0, str(ROOT))
        from tests.peer import import_neuralpredictors

        import_neuralpredictors()
        from neuralpredictors.layers import cores, readouts
    else:
        from pipeline.models import cores, readouts

    batch, channels, height, width, neurons = (
        sizes[k] for k in ("batch", "channels", "height", "width", "neurons")
    )
    in_shape = (channels, height, width)
    torch.manual_seed(0)
    if case == "core":
        module = cores.Stacked2dCore(
            input_channels=1,
            hidden_channels=channels,
            input_kern=9,
            hidden_kern=7,
            layers=4,
            depth_separable=True,
            stack=-1,
            gamma_input=6.3831,
        )
        x = torch.randn(batch, 1, height, width)
    else:
        if case == "factorized":
            module = readouts.FullFactorized2d(in_shape, neurons, bias=True)
        elif case == "gaussian2d":
            module = readouts.Gaussian2d(
                in_shape, neurons, bias=True, init_mu_range=0.5, init_sigma_range=0.5
            )
        elif case == "full_gaussian2d":
            module = readouts.FullGaussian2d(in_shape, neurons, bias=True, gauss_type="full")
        elif case == "point_pooled2d":
            module = readouts.PointPooled2d(
                in_shape, neurons, pool_steps=2, bias=True, pool_kern=2, init_range=0.2
            )
        else:
            raise ValueError(f"unknown case {case!r}; choose from {CASES}")
        x = torch.randn(batch, *in_shape, requires_grad=True)
    module.train()
    return module, x


def run_worker(case: str, impl: str, sizes: dict, repeats: int, threads: int) -> dict:
    """Time and measure one case in this process; returns a JSON-able dict."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    module, x = _build(case, impl, sizes)
    with torch.no_grad():
        out_shape = module(x).shape
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(1))

    def step() -> tuple[float, float]:
        module.zero_grad(set_to_none=True)  # gradients are allocated inside the measured step
        x.grad = None
        t0 = time.perf_counter()
        out = module(x)
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    step()  # warm-up: lazy kernel and library initialisation is not counted
    module.zero_grad(set_to_none=True)
    x.grad = None
    exact = _reset_peak()
    base_kib = _rss_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forward, backward = zip(*(step() for _ in range(repeats)))
    peak_kib = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": case,
        "impl": impl,
        "forward_s": min(forward),
        "backward_s": min(backward),
        "peak_mib": max(peak_kib - base_kib, 0) / 1024,
        "peak_exact": exact,
        "params_m": sum(p.numel() for p in module.parameters()) / 1e6,
    }


# ------------------------------------------------------------------------------------ driver
def _run_case(case: str, impl: str, sizes: dict, repeats: int, threads: int) -> dict | str:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        case,
        impl,
        "--sizes",
        json.dumps(sizes),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # a fixed mmap threshold makes glibc return every freed large buffer to the system at once,
        # so the resident-set size follows the live tensors and its peak is the step's peak
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def _print_ratios(cases: list[str], results: dict) -> None:
    """Print ours / peer time and memory ratios per case (below 1: we are faster / smaller)."""
    print("\nours / peer (below 1.00: ours is faster / smaller)")
    header = f"{'module':<16} {'fwd':>7} {'bwd':>7} {'fwd+bwd':>8} {'peak mem':>9}"
    print(header + "\n" + "-" * len(header))
    for case in cases:
        ours, peer = results[(case, "ours")], results[(case, "peer")]
        if isinstance(ours, str) or isinstance(peer, str):
            print(f"{case:<16} {'-':>7} {'-':>7} {'-':>8} {'-':>9}")
            continue
        t_ours = ours["forward_s"] + ours["backward_s"]
        t_peer = peer["forward_s"] + peer["backward_s"]
        print(
            f"{case:<16} {_fmt_ratio(ours['forward_s'], peer['forward_s']):>7} "
            f"{_fmt_ratio(ours['backward_s'], peer['backward_s']):>7} {_fmt_ratio(t_ours, t_peer):>8} "
            f"{_fmt_ratio(ours['peak_mib'], peer['peak_mib']):>9}"
        )


def _print_verdicts(cases: list[str], results: dict, compare: bool, tutorial: bool) -> None:
    """Print the FullFactorized2d goals: never slower than the peer, and backward <= 2 x forward.

    The goals are set at the tutorial shapes (``tutorial``); at other shapes the verdicts are only
    indicative (at small shapes fixed per-call costs, not the GEMMs, dominate the backward pass).
    """
    if "factorized" not in cases:
        return
    ours = results[("factorized", "ours")]
    if isinstance(ours, str):
        print("\nFullFactorized2d goals: not measured (our run failed)")
        return
    ratio = ours["backward_s"] / ours["forward_s"]
    print("\nFullFactorized2d goals" + ("" if tutorial else " (set at the tutorial shapes; these differ)"))
    print(
        f"  backward / forward = {ratio:.2f} (goal <= {FACTORIZED_MAX_BWD_FWD:.1f}): "
        f"{'PASS' if ratio <= FACTORIZED_MAX_BWD_FWD else 'FAIL'}"
    )
    peer = results.get(("factorized", "peer"))
    if not compare or peer is None or isinstance(peer, str):
        print("  not slower than neuralpredictors: not measured")
        return
    print(f"  peer backward / forward = {peer['backward_s'] / peer['forward_s']:.2f}")
    for label, key in (("forward", "forward_s"), ("backward", "backward_s")):
        r = ours[key] / peer[key]
        print(f"  {label} time ours / peer = {r:.2f} (goal <= 1.00): {'PASS' if r <= 1.0 else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small shapes (16 x 36 x 64, 500 neurons, batch 4)"
    )
    parser.add_argument("--batch", type=int, default=TUTORIAL_SIZES["batch"])
    parser.add_argument("--channels", type=int, default=TUTORIAL_SIZES["channels"])
    parser.add_argument("--height", type=int, default=TUTORIAL_SIZES["height"])
    parser.add_argument("--width", type=int, default=TUTORIAL_SIZES["width"])
    parser.add_argument("--neurons", type=int, default=TUTORIAL_SIZES["neurons"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument(
        "--rounds", type=int, default=1, help="subprocesses per implementation, alternating (best is kept)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument("--no-peer", action="store_true", help="measure our modules only")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(*args.worker, json.loads(args.sizes), args.repeats, args.threads)))
        return 0

    sizes = dict(
        batch=args.batch, channels=args.channels, height=args.height, width=args.width, neurons=args.neurons
    )
    if args.quick:
        sizes = dict(batch=4, channels=16, height=36, width=64, neurons=500)
        args.repeats = min(args.repeats, 2)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {CASES}")
    impls = ["ours"] if args.no_peer else ["ours", "peer"]
    print(
        f"shapes: batch {sizes['batch']}, core input 1x{sizes['height']}x{sizes['width']}, readout input "
        f"{sizes['channels']}x{sizes['height']}x{sizes['width']}, {sizes['neurons']} neurons; "
        f"{args.threads} thread(s), best of {args.rounds} x {args.repeats} steps (after 1 warm-up each); times in ms, memory in MiB"
    )
    header = f"{'module':<16} {'impl':<5} {'fwd ms':>9} {'bwd ms':>9} {'bwd/fwd':>8} {'peak MiB':>9} {'params M':>9}"
    print(header + "\n" + "-" * len(header), flush=True)
    results = {}
    for case in cases:
        for _ in range(args.rounds):
            # implementations alternate within each round, so slow phases of a shared machine hit both
            for impl in impls:
                res = _run_case(case, impl, sizes, args.repeats, args.threads)
                best = results.get((case, impl))
                if isinstance(res, str):
                    results.setdefault((case, impl), res)
                    continue
                if best is None or isinstance(best, str):
                    results[(case, impl)] = res
                else:
                    best.update(
                        forward_s=min(best["forward_s"], res["forward_s"]),
                        backward_s=min(best["backward_s"], res["backward_s"]),
                        peak_mib=min(best["peak_mib"], res["peak_mib"]),
                    )
        for impl in impls:
            res = results[(case, impl)]
            if isinstance(res, str):
                print(f"{case:<16} {impl:<5} failed: {res}", flush=True)
                continue
            print(
                f"{case:<16} {impl:<5} {res['forward_s'] * 1e3:>9.1f} {res['backward_s'] * 1e3:>9.1f} "
                f"{_fmt_ratio(res['backward_s'], res['forward_s']):>8} {res['peak_mib']:>9.0f} {res['params_m']:>9.3f}",
                flush=True,
            )
    if not args.no_peer:
        _print_ratios(cases, results)
    _print_verdicts(cases, results, compare=not args.no_peer, tutorial=sizes == TUTORIAL_SIZES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
