"""GPU throughput: SOTA seconds per epoch (fp32, bf16, compiled) and models per GPU-hour with 1-8 workers.

Part 1 trains the Sensorium 2022 SOTA configuration on the real subset (synthetic data of the same
shape when it is absent) with the loader tiers resident on the GPU, ``--epochs`` epochs each as
fp32, under bf16 autocast (``amp="bf16"``) and with ``compile=True``; printed: the first epoch apart
(it includes compilation), the median of the others, and the peak GPU memory.

Part 2 measures models per GPU-hour through the real database path: the embedded PostgreSQL server
(``DJ_HOST`` unset) in throw-away schemas, K ``sysid worker --device cuda`` processes on the one GPU
(K = ``--workers``), ``--jobs-per-worker`` × K seeds of one configuration (small or SOTA) registered
after every worker has started; timing runs from the registration to the last stored result. GPU
memory per worker is the largest per-process memory ``nvidia-smi`` reported while the jobs ran.

Without a CUDA device it prints that it skipped and exits 0. Usage:
``python benchmarks/bench_gpu.py [--epochs 3] [--workers 1 2 4 8] [--jobs-per-worker 2]
[--model-epochs 2] [--configs small sota] [--skip-epochs] [--skip-workers]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REAL = REPO.parent / "shared" / "data" / "lurz2020-static20457-5-9-trainval-1000" / "static20457-5-9-preproc0"
TRAINER = dict(lr_init=0.009, lr_decay_steps=4, avg_loss=False, patience=5, tolerance=1e-6)


def _configs() -> dict[str, dict[str, Any]]:
    from benchmarks.bench_throughput import SMALL_MODEL
    from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG

    return {"small": SMALL_MODEL, "sota": SENSORIUM_SOTA_MODEL_CONFIG}


def dataset_path(workdir: Path) -> Path:
    """The real subset, or a synthetic session of the same image size and neuron count."""
    if REAL.exists():
        return REAL
    from pipeline.data import make_synthetic_dataset

    return Path(
        make_synthetic_dataset(workdir / "static1-1-1-synthetic", n_neurons=1000, n_train=4000, seed=1)
    )


def epoch_times(path: Path, epochs: int) -> list[dict[str, Any]]:
    """SOTA seconds per epoch on the GPU: fp32, bf16 autocast, compiled."""
    from pipeline.data import static_loaders
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    loaders = static_loaders([str(path)], batch_size=128, seed=1, normalize=True, device="cuda")
    rows = []
    for name, options in (("fp32", {}), ("bf16", {"amp": "bf16"}), ("compiled", {"compile": True})):
        model = stacked_core_full_gauss_readout(loaders, seed=1, **_configs()["sota"])
        torch.cuda.reset_peak_memory_stats()
        score, output, _ = standard_trainer(
            model, loaders, seed=1, device="cuda", max_iter=epochs, progress=False, verbose=False,
            **TRAINER, **options,
        )  # fmt: skip
        seconds = output["epoch_seconds"]
        rows.append(
            {
                "variant": name,
                "first_s": seconds[0],
                "epoch_s": float(np.median(seconds[1:])) if len(seconds) > 1 else float("nan"),
                "val": score,
                "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            }
        )
    return rows


def _gpu_memory_by_pid() -> dict[int, float]:
    """MiB per process on the GPUs (``nvidia-smi``); empty when it is not available."""
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    memory = {}
    for line in text.strip().splitlines():
        pid, used = (part.strip() for part in line.split(","))
        if pid.isdigit():
            memory[int(pid)] = float(used)
    return memory


def _plan(path: Path, config: dict[str, Any], epochs: int, seeds: list[int]) -> dict[str, Any]:
    return {
        "seeds": seeds,
        "dataset": {
            "fn": "pipeline.data.static_loaders",
            "config": {"paths": [str(path)], "batch_size": 128, "normalize": True, "cuda": True},
        },
        "model": {"fn": "pipeline.models.stacked_core_full_gauss_readout", "config": dict(config)},
        "trainer": {
            "fn": "pipeline.training.standard_trainer",
            "config": {**TRAINER, "max_iter": epochs, "device": "cuda"},
        },
    }


def models_per_hour(
    schemas: Any, path: Path, config: dict[str, Any], epochs: int, workers: int, jobs: int
) -> dict:
    """Models per GPU-hour with ``workers`` worker processes on one GPU, through the database."""
    from sysid.register import parse_plan, register_plan, validate_plan

    prefix = f"benchgpu_{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix)
    env = dict(os.environ, SYSID_SCHEMA_PREFIX=prefix, PYTHONWARNINGS="ignore")
    command = [
        sys.executable,
        "-m",
        "sysid",
        "worker",
        "--threads",
        "1",
        "--device",
        "cuda",
        "--sleep",
        "0.2",
    ]
    logs = [Path(tempfile.mkdtemp(prefix="sysid-gpu-logs-")) / f"worker{i}.log" for i in range(workers)]
    processes: list[subprocess.Popen] = []
    memory: dict[int, float] = {}
    try:
        plan = _plan(path, config, epochs, list(range(1, jobs + 1)))
        schemas.Dataset.add_entry(plan["dataset"]["fn"], plan["dataset"]["config"])
        schemas.DataInfo().populate(reserve_jobs=True)  # once, before the timing
        for log in logs:
            with log.open("w") as stream:
                processes.append(
                    subprocess.Popen(command, env=env, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
                )
        deadline = time.time() + 180
        while not all("worker started" in log.read_text(errors="replace") for log in logs):
            if any(p.poll() is not None for p in processes) or time.time() > deadline:
                raise RuntimeError(f"a worker did not start:\n{logs[0].read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        started = time.perf_counter()
        parsed = parse_plan(plan)
        validate_plan(parsed)
        register_plan(parsed, schemas)
        while len(schemas.TrainedModel()) < jobs:
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"a worker exited early:\n{logs[0].read_text(errors='replace')[-3000:]}")
            for pid, used in _gpu_memory_by_pid().items():
                memory[pid] = max(memory.get(pid, 0.0), used)
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        if len(schemas.errors()):
            raise RuntimeError(f"jobs failed:\n{schemas.errors()}")
        devices = {row["device"] for row in schemas.TrainedModel().proj("device").to_dicts()}
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=120)
        schemas.drop_all()
    ours = [memory[p.pid] for p in processes if p.pid in memory]
    return {
        "models_per_hour": 3600.0 * jobs / elapsed,
        "seconds": elapsed,
        "mib_per_worker": max(ours) if ours else float("nan"),
        "devices": sorted(devices),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant in part 1")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs-per-worker", type=int, default=2)
    parser.add_argument("--model-epochs", type=int, default=2, help="epochs per model in part 2")
    parser.add_argument("--configs", nargs="+", default=["small", "sota"], choices=["small", "sota"])
    parser.add_argument("--skip-epochs", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device, skipped")
        return
    warnings.filterwarnings("ignore")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = dataset_path(Path(tmp))
        if not args.skip_epochs:
            print("| SOTA on the GPU | first epoch s | s/epoch | val corr | peak MiB |")
            print("|---|---:|---:|---:|---:|")
            for row in epoch_times(path, args.epochs):
                print(
                    f"| {row['variant']} | {row['first_s']:.2f} | {row['epoch_s']:.2f} | {row['val']:.4f} "
                    f"| {row['peak_mib']:.0f} |",
                    flush=True,
                )
        if not args.skip_workers:
            from sysid.database import activate, quiet_datajoint

            quiet_datajoint()
            schemas = activate()
            print("| config | workers | models | s | models per GPU-hour | MiB per worker | device |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for name in args.configs:
                for workers in args.workers:
                    jobs = workers * args.jobs_per_worker
                    row = models_per_hour(schemas, path, _configs()[name], args.model_epochs, workers, jobs)
                    print(
                        f"| {name} | {workers} | {jobs} | {row['seconds']:.1f} | {row['models_per_hour']:.0f} "
                        f"| {row['mib_per_worker']:.0f} | {', '.join(row['devices'])} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
