"""Benchmark the database path of the pipeline against calling the trainer directly.

1. Overhead per job: a job through the database (``schemas.populate_all`` in this process: reserve,
   train, store the model, then per-neuron scores and readout parameters) against building the same
   loaders and model and calling the same trainer directly. Reported for the training step alone
   (TrainedModel) and for the whole job; DB and direct runs alternate, so a change in the machine's
   load hits both. Goal: < 2 s per job.
2. Throughput with 1 and 2 worker processes (``sysid worker --threads 1 --device cpu``, OpenMP/MKL
   limited to one thread through the environment) on CPU-bound jobs of a few seconds each: the
   workers are started and have connected (logged "worker started") before the jobs are registered;
   timing runs from registration to the last stored result. Each worker's first job includes loading
   the model code, in both runs. Goal: 2 workers ≥ 1.8 × one on a machine with ≥ 2 idle cores.

3. With ``--gpus``: throughput of ``sysid worker --gpus SPEC --per-gpu K`` (one supervisor, K worker
   processes per GPU, models trained on the GPU) for each K of ``--per-gpu`` (default 1, 2, 4),
   as jobs per minute and as the ratio to K=1 measured in the same run. Replaces measurement 2.
   Without CUDA the same run trains on the CPU (a check of the script; its numbers mean nothing).

Runs on the embedded PostgreSQL server (DJ_HOST unset) or the configured database, in throw-away
schemas. The load average is printed before and after: on a busy machine the ratio means little.
Usage::

    python benchmarks/bench_pipeline.py                      # 10 jobs of 30 epochs (~3-4 s each)
    python benchmarks/bench_pipeline.py --jobs 12 --epochs 40
    python benchmarks/bench_pipeline.py --gpus all --per-gpu 1,2,4 --jobs 48   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

#: every worker (and this process) runs its CPU work on one thread
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
os.environ.update(ONE_THREAD)  # before torch is imported


def _grid(data: Path, epochs: int, seeds: list[int], device: str = "cpu") -> dict[str, Any]:
    """The demo registration document with one model (Gaussian readout), training on ``device``, ``seeds``."""
    from sysid.demo import demo_grid

    doc = demo_grid(data, epochs=epochs)
    doc["model"] = doc["model"][0]
    doc["trainer"]["config"]["device"] = device
    doc["seeds"] = seeds
    doc.pop("experiment")
    return doc


def _register(schemas: Any, doc: dict[str, Any]) -> float:
    """Register ``doc``'s combinations; return the seconds it took."""
    from sysid.register import parse_plan, register_plan, validate_plan

    started = time.perf_counter()
    plan = parse_plan(doc)
    validate_plan(plan)
    register_plan(plan, schemas)
    return time.perf_counter() - started


def direct_seconds(doc: dict[str, Any], seed: int) -> float:
    """Build loaders and model and call the trainer, as a notebook would (no database)."""
    from pipeline.builder import get_all_parts

    started = time.perf_counter()
    dataloaders, model, trainer = get_all_parts(
        doc["dataset"]["fn"],
        doc["dataset"]["config"],
        doc["model"]["fn"],
        doc["model"]["config"],
        seed=seed,
        trainer_fn=doc["trainer"]["fn"],
        trainer_config=doc["trainer"]["config"],
    )
    trainer(model, dataloaders, seed)
    return time.perf_counter() - started


def overhead(schemas: Any, data: Path, epochs: int, jobs: int) -> dict[str, float]:
    """Per-job seconds through the database vs. the direct trainer call (medians over ``jobs``)."""
    from schemas.jobs import computed_tables

    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix)
    try:
        seeds = list(range(1, jobs + 1))
        doc = _grid(data, epochs, seeds)
        register = _register(schemas, doc)
        # DataInfo is computed once per dataset, not per job: do it first, time it separately
        started = time.perf_counter()
        schemas.DataInfo().populate(reserve_jobs=True)
        data_info = time.perf_counter() - started
        direct_seconds(doc, 0)  # warm-up: imports and first-call costs stay out of both medians
        tables = computed_tables()
        train, whole, direct = [], [], []
        for seed in seeds:
            direct.append(direct_seconds(doc, seed))
            started = time.perf_counter()
            tables["TrainedModel"].populate(reserve_jobs=True, max_calls=1)
            train.append(time.perf_counter() - started)
            schemas.populate_all(reserve_jobs=True, max_calls=1)  # scores and readout parameters
            whole.append(time.perf_counter() - started)
        if len(schemas.ReadoutParameters()) != jobs or len(schemas.errors()):
            raise RuntimeError(f"database path failed:\n{schemas.errors()}")
    finally:
        schemas.drop_all()
    return {
        "register_s": register,
        "data_info_s": data_info,
        "direct_job_s": statistics.median(direct),
        "db_train_s": statistics.median(train),
        "db_job_s": statistics.median(whole),
        "train_overhead_s": statistics.median(t - d for t, d in zip(train, direct, strict=True)),
        "job_overhead_s": statistics.median(w - d for w, d in zip(whole, direct, strict=True)),
    }


def _wait_for_start(
    logs: list[Path], processes: list[subprocess.Popen], timeout: float = 180.0, per_log: int = 1
) -> None:
    """Wait until every worker has logged "worker started" (imported, connected, threads set).

    ``per_log``: workers writing to each log (a supervisor's log holds all its workers' lines).
    """
    deadline = time.monotonic() + timeout
    while not all(log.read_text(errors="replace").count("worker started") >= per_log for log in logs):
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a worker exited at start:\n{logs[0].read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers did not start within {timeout} s")
        time.sleep(0.2)


def throughput(
    schemas: Any,
    data: Path,
    epochs: int,
    jobs: int,
    workers: int,
    gpus: list[str] | None = None,
    per_gpu: int = 1,
    device: str = "cpu",
) -> dict[str, float]:
    """Jobs per minute, from registration to the last result.

    Args:
        workers: ``sysid worker --device cpu --threads 1`` processes (ignored with ``gpus``).
        gpus: run one ``sysid worker --gpus <gpus> --per-gpu <per_gpu>`` supervisor instead.
        device: the trainer's device.
    """
    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix)
    env = dict(os.environ, SYSID_SCHEMA_PREFIX=prefix, PYTHONWARNINGS="ignore", **ONE_THREAD)
    command = [sys.executable, "-m", "sysid", "worker", "--threads", "1", "--sleep", "0.2"]
    if gpus is None:
        command += ["--device", "cpu"]
        per_log = 1
    else:
        command += ["--gpus", ",".join(gpus), "--per-gpu", str(per_gpu)]
        per_log, workers = len(gpus) * per_gpu, 1  # one supervisor; its workers share its log
    log_dir = Path(tempfile.mkdtemp(prefix="sysid-bench-logs-"))
    logs = [log_dir / f"worker{i}.log" for i in range(workers)]
    processes: list[subprocess.Popen] = []
    try:
        doc = _grid(data, epochs, list(range(1, jobs + 1)), device=device)
        # the dataset's DataInfo first, so that every measured job is a model job
        schemas.Dataset.add_entry(doc["dataset"]["fn"], doc["dataset"]["config"], skip_duplicates=True)
        schemas.DataInfo().populate(reserve_jobs=True)
        for log in logs:
            with log.open("w") as stream:
                processes.append(
                    subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT)
                )
        _wait_for_start(logs, processes, per_log=per_log)
        started = time.perf_counter()
        _register(schemas, doc)
        # a job ends with its readout parameters stored; one cheap COUNT per poll
        while len(schemas.ReadoutParameters()) < jobs:
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"a worker exited early:\n{logs[0].read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        if len(schemas.errors()):
            raise RuntimeError(f"jobs failed:\n{schemas.errors()}")
        # all workers share one host name: count each one's finished trainings in its log (or, under
        # a supervisor, by the slot tag of its lines)
        if gpus is None:
            per_worker = [log.read_text(errors="replace").count("done  TrainedModel") for log in logs]
        else:
            done = re.findall(
                r"\[(gpu\S+)\] schemas\.jobs: done  TrainedModel", logs[0].read_text(errors="replace")
            )
            per_worker = [done.count(slot) for slot in sorted(set(done))]
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=120)
        schemas.drop_all()
    return {"jobs_per_min": 60.0 * jobs / elapsed, "seconds": elapsed, "per_worker": per_worker}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    """Run both measurements and print them with the machine's load average."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10, help="jobs per throughput run (overhead: 4)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per job")
    parser.add_argument("--overhead-jobs", type=int, default=4, help="jobs for the overhead medians")
    parser.add_argument(
        "--gpus",
        default=None,
        help="measure `sysid worker --gpus GPUS` (all, or 0,1,...) instead of CPU workers",
    )
    parser.add_argument(
        "--per-gpu", default="1,2,4", help="with --gpus: worker processes per GPU to compare (default 1,2,4)"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the workers: one thread per job
    from sysid.database import activate, quiet_datajoint
    from sysid.demo import make_demo_data

    quiet_datajoint()
    schemas = activate()
    data = make_demo_data(Path(tempfile.mkdtemp(prefix="sysid-bench-")))
    print(f"load average at start (1/5/15 min): {_load()}; cores: {os.cpu_count()}", flush=True)

    result = overhead(schemas, data, args.epochs, args.overhead_jobs)
    print(
        f"per job ({args.epochs} epochs, medians of {args.overhead_jobs}): direct trainer call "
        f"{result['direct_job_s']:.2f} s; through the database: training {result['db_train_s']:.2f} s "
        f"(overhead {result['train_overhead_s']:+.2f} s), whole job with scores and readout parameters "
        f"{result['db_job_s']:.2f} s (overhead {result['job_overhead_s']:+.2f} s; goal < 2 s); "
        f"registration {result['register_s']:.2f} s, DataInfo once {result['data_info_s']:.2f} s",
        flush=True,
    )
    if args.gpus is not None:
        gpu_throughput(schemas, data, args)
        return
    one = throughput(schemas, data, args.epochs, args.jobs, workers=1)
    print(f"1 worker:  {one['jobs_per_min']:.1f} jobs/min ({one['seconds']:.1f} s)", flush=True)
    two = throughput(schemas, data, args.epochs, args.jobs, workers=2)
    print(
        f"2 workers: {two['jobs_per_min']:.1f} jobs/min ({two['seconds']:.1f} s; jobs per worker "
        f"{two['per_worker']})",
        flush=True,
    )
    print(
        f"throughput ({args.jobs} jobs of {args.epochs} epochs): 2 workers / 1 worker = "
        f"{two['jobs_per_min'] / one['jobs_per_min']:.2f}x (goal >= 1.8x); load average at end: {_load()}"
    )


def gpu_throughput(schemas: Any, data: Path, args: argparse.Namespace) -> None:
    """Measurement 3: jobs per minute for each ``--per-gpu`` K, and the ratio to K=1 (or the first K)."""
    import torch

    from sysid.supervisor import parse_gpus

    gpus = parse_gpus(args.gpus)
    counts = [int(k) for k in args.per_gpu.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("no CUDA here: the --gpus run trains on the CPU (a check of the script; numbers mean nothing)")
    results = {}
    for k in counts:
        results[k] = throughput(schemas, data, args.epochs, args.jobs, 0, gpus=gpus, per_gpu=k, device=device)
        ratio = results[k]["jobs_per_min"] / results[counts[0]]["jobs_per_min"]
        print(
            f"{len(gpus)} GPU(s) x {k} worker(s): {results[k]['jobs_per_min']:.1f} jobs/min "
            f"({results[k]['seconds']:.1f} s; jobs per worker {results[k]['per_worker']}); "
            f"{ratio:.2f}x of {counts[0]} per GPU",
            flush=True,
        )
    print(
        f"throughput ({args.jobs} jobs of {args.epochs} epochs on {device}); load average at end: {_load()}"
    )


if __name__ == "__main__":
    main()
