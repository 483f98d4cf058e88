"""Benchmark the hyper-parameter search: TPE vs random vs the default grid, and the driver's overhead.

On the demo's synthetic dataset (known receptive fields), three studies over the same search space
(``model.gamma_readout`` and ``trainer.lr_init``, both log-scaled) each train the same number of
models (``--trials``, one seed each, no pruning) with the same two worker processes
(``sysid worker --threads 1``, started once and kept for all studies). Printed per sampler: the
best validation correlation (the objective, ``TrainedModel.score``) after N trials and the trial
that reached it; and the driver's time per trial (its database rounds — asking, registering,
telling — over the trials, without the waits between rounds) beside the mean training time of a
trial measured in the same run. Goal: well under 1 s per trial.

The studies run one after the other in this process (``SearchDriver.run``), on the embedded
PostgreSQL server (DJ_HOST unset) or the configured database, in a throw-away schema. One sampler
seed per study unless ``--repeats``: the best score of one study of N trials is noisy. The load
average is printed before and after. Usage::

    python benchmarks/bench_search.py                    # 9 trials per sampler (a 3 x 3 grid), 6 epochs (~3 min)
    python benchmarks/bench_search.py --trials 16        # a 4 x 4 grid (~8 min on 2 busy cores)
    python benchmarks/bench_search.py --trials 16 --epochs 8 --repeats 2
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
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
os.environ.update(ONE_THREAD)  # before torch is imported


def spec_document(data: Path, name: str, sampler: str, trials: int, epochs: int, seed: int) -> dict[str, Any]:
    """The benchmark's search: the demo's Gaussian-readout model, two log-scaled parameters."""
    from sysid.demo import demo_grid

    base = demo_grid(data, epochs=epochs)
    model = base["model"][0]
    model["config"].pop("gamma_readout", None)
    trainer = base["trainer"]
    trainer["config"].pop("lr_init", None)
    trainer["config"]["device"] = "cpu"
    sampler_spec: dict[str, Any] = {"name": sampler, "seed": seed}
    if sampler == "tpe":
        sampler_spec["n_startup_trials"] = max(2, trials // 3)
    return {
        "study": {"name": name, "comment": f"bench_search {sampler}"},
        "seeds": [1],
        "dataset": base["dataset"],
        "model": {"fn": model["fn"], "config": model["config"]},
        "trainer": {"fn": trainer["fn"], "config": trainer["config"]},
        "search_space": {
            "model.gamma_readout": {"type": "float", "low": 1e-4, "high": 3.0, "log": True},
            "trainer.lr_init": {"type": "float", "low": 3e-4, "high": 0.1, "log": True},
        },
        "n_trials": trials,
        "parallelism": 2,
        "sampler": sampler_spec,
        "pruner": "none",
    }


def start_workers(prefix: str, n: int, log_dir: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    """``n`` polling ``sysid worker`` processes on the schema ``prefix``, once each has connected."""
    env = {**os.environ, **ONE_THREAD, "SYSID_SCHEMA_PREFIX": prefix, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "sysid", "worker", "--threads", "1", "--device", "cpu", "--sleep", "0.2"]
    logs = [log_dir / f"worker{i}.log" for i in range(n)]
    processes = [
        subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    deadline = time.monotonic() + 180
    while not all("worker started" in log.read_text(errors="replace") for log in logs):
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RuntimeError(f"a worker did not start:\n{logs[0].read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return processes, logs


def run_study(schemas: Any, doc: dict[str, Any], poll: float) -> dict[str, Any]:
    """Run one study to the end; its best score, the trial that reached it, and the driver's time."""
    from schemas import search_tables as st
    from sysid.search import SearchDriver
    from sysid.search_spec import parse_spec

    spec = parse_spec(doc)
    driver = SearchDriver(spec, schemas)
    started = time.perf_counter()
    result = driver.run(poll=poll, timeout=1800)
    elapsed = time.perf_counter() - started
    if not result.done:
        raise RuntimeError(f"study {spec.study} did not finish: {result}")
    trials = st.search_trials(spec.study)
    if (trials["state"] != "complete").any():
        raise RuntimeError(f"study {spec.study}: trials not complete:\n{trials}")
    values = list(trials.sort_values("trial_number")["value"])
    best = max(values)
    return {
        "best": best,
        "best_trial": values.index(best),
        "trials": len(values),
        "driver_per_trial": sum(driver.step_seconds) / len(values),
        "round_seconds": statistics.median(driver.step_seconds),
        "rounds": len(driver.step_seconds),
        "train_seconds": float(trials["seconds"].mean()),
        "wall": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=9, help="trials (trained models) per study")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per model")
    parser.add_argument("--repeats", type=int, default=1, help="studies per sampler (sampler seeds 0..R-1)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between the driver's rounds")
    parser.add_argument("--keep", action="store_true", help="keep the schema (default: drop it)")
    args = parser.parse_args()
    # a SIGTERM (e.g. from `timeout`) stops the workers and drops the schema on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    import torch

    torch.set_num_threads(1)
    import schemas
    from sysid.demo import make_demo_data

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    data = make_demo_data(work / "data")
    prefix = f"bench_search_{uuid.uuid4().hex[:6]}_"
    schemas.activate(prefix)
    processes, _logs = start_workers(prefix, 2, work)
    rows = []
    try:
        for repeat in range(args.repeats):
            for sampler in ("tpe", "random", "grid"):
                name = f"bench-{sampler}-{repeat}"
                doc = spec_document(data, name, sampler, args.trials, args.epochs, seed=repeat)
                row = run_study(schemas, doc, args.poll)
                rows.append({"sampler": sampler, "repeat": repeat, **row})
                print(
                    f"{sampler:6s} seed {repeat}: best {row['best']:.4f} (trial {row['best_trial']}), "
                    f"driver {row['driver_per_trial']:.3f} s/trial, training {row['train_seconds']:.2f} s/trial, "
                    f"{row['wall']:.0f} s",
                    flush=True,
                )
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=120)
        if not args.keep:
            schemas.activate(prefix)
            schemas.drop_all()

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(
        f"\n{args.trials} trials per study, {args.epochs} epochs, 2 workers, {args.repeats} sampler seed(s)\n"
    )
    print(
        "| sampler | best validation correlation (mean over seeds) | trial reaching it | driver s/trial "
        "| driver rounds | median round s | training s/trial | study wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for sampler in ("tpe", "random", "grid"):
        mine = [r for r in rows if r["sampler"] == sampler]

        def mean(name: str, mine=mine) -> float:
            return statistics.mean(r[name] for r in mine)

        trial = ", ".join(str(r["best_trial"]) for r in mine)
        print(
            f"| {sampler} | {mean('best'):.4f} | {trial} | {mean('driver_per_trial'):.3f} | {mean('rounds'):.0f} "
            f"| {mean('round_seconds'):.3f} | {mean('train_seconds'):.2f} | {mean('wall'):.0f} |"
        )


if __name__ == "__main__":
    main()
