"""Benchmark the database path of the pipeline against calling the trainer directly.

1. Overhead per job: register → reserve → train → store the model, per-neuron scores and readout
   parameters (``schemas.populate_all`` in this process) minus the time of building the same
   loaders and model and calling the same trainer directly. Goal: < 2 s per job.
2. Throughput with 1 and 2 worker processes (``sysid worker``, one torch thread each) on CPU-bound
   tiny jobs, measured from registration to the last stored result (worker start-up excluded:
   the workers are started first and poll). Goal: 2 workers ≥ 1.8 × one.

Runs on the embedded PostgreSQL server (DJ_HOST unset) or the configured database, in throw-away
schemas. Usage::

    python benchmarks/bench_pipeline.py                # defaults: 4 jobs for overhead, 8 per throughput run
    python benchmarks/bench_pipeline.py --jobs 4 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _grid(data: Path, epochs: int, seeds: list[int]) -> dict:
    from sysid.demo import demo_grid

    doc = demo_grid(data, epochs=epochs)
    doc["model"] = doc["model"][0]  # the Gaussian-readout model only
    doc["trainer"]["config"]["device"] = "cpu"
    doc["seeds"] = seeds
    doc.pop("experiment")
    return doc


def _register(schemas, doc: dict) -> float:
    from sysid.register import parse_plan, register_plan, validate_plan

    started = time.perf_counter()
    plan = parse_plan(doc)
    validate_plan(plan)
    register_plan(plan, schemas)
    return time.perf_counter() - started


def direct_seconds(doc: dict, seed: int) -> float:
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


def overhead(schemas, data: Path, epochs: int, jobs: int) -> dict[str, float]:
    """Per-job time through the database vs. the direct trainer call (medians over ``jobs``)."""
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
        through_db = []
        for _ in seeds:
            started = time.perf_counter()
            schemas.populate_all(reserve_jobs=True, max_calls=1)
            through_db.append(time.perf_counter() - started)
        assert len(schemas.TrainedModel()) == jobs and len(schemas.ReadoutParameters()) == jobs
        direct = [direct_seconds(doc, seed) for seed in seeds]
    finally:
        schemas.drop_all()
    return {
        "register_s": register,
        "data_info_s": data_info,
        "db_job_s": statistics.median(through_db),
        "direct_job_s": statistics.median(direct),
        "overhead_s": statistics.median(through_db) - statistics.median(direct),
    }


def throughput(schemas, data: Path, epochs: int, jobs: int, workers: int) -> float:
    """Jobs per minute with ``workers`` worker processes, from registration to the last result."""
    prefix = f"bench_{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix)
    env = dict(os.environ, SYSID_SCHEMA_PREFIX=prefix, PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "sysid", "worker", "--threads", "1", "--device", "cpu", "--sleep", "0.5"]
    processes = []
    try:
        doc = _grid(data, epochs, list(range(1, jobs + 1)))
        # register the dataset's DataInfo first, so every measured job is a model job
        _register(schemas, {**doc, "seeds": [0]})
        schemas.populate_all(reserve_jobs=True)
        processes = [
            subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(workers)
        ]
        time.sleep(15)  # let the workers import torch and connect (start-up is not throughput)
        baseline = len(schemas.ReadoutParameters())  # the seed-0 warm-up model
        started = time.perf_counter()
        _register(schemas, doc)
        # a job ends with its readout parameters stored; poll with one cheap COUNT so that the
        # measurement does not compete with the workers for the two cores
        while len(schemas.ReadoutParameters()) < baseline + jobs:
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a worker exited early")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=120)
        schemas.drop_all()
    return 60.0 * jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=8, help="jobs per throughput run (overhead: half of it)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per job")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the workers: one thread per job
    from sysid.database import activate, quiet_datajoint
    from sysid.demo import make_demo_data

    quiet_datajoint()
    schemas = activate()
    data = make_demo_data(Path(tempfile.mkdtemp(prefix="sysid-bench-")))

    result = overhead(schemas, data, args.epochs, max(2, args.jobs // 2))
    print(
        f"per job: through the database {result['db_job_s']:.2f} s, direct trainer call "
        f"{result['direct_job_s']:.2f} s -> overhead {result['overhead_s']:.2f} s (goal < 2 s); "
        f"registration {result['register_s']:.2f} s, DataInfo once {result['data_info_s']:.2f} s"
    )
    one = throughput(schemas, data, args.epochs, args.jobs, workers=1)
    two = throughput(schemas, data, args.epochs, args.jobs, workers=2)
    print(
        f"throughput ({args.jobs} jobs, {args.epochs} epochs each): 1 worker {one:.1f} jobs/min, "
        f"2 workers {two:.1f} jobs/min -> {two / one:.2f}x (goal >= 1.8x; cores: {os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
