"""``sysid demo``: the whole pipeline on a synthetic dataset, start to finish, in a few minutes on a laptop.

Synthetic data with known receptive fields → registration of a small grid → N worker processes
sharing the jobs → results table → report of the best model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO_PREFIX", "demo_grid", "make_demo_data", "run_demo", "start_workers"]

#: schema prefix of the demo unless SYSID_SCHEMA_PREFIX is set (keeps it apart from real work)
DEMO_PREFIX = "sysid_demo_"

#: tiny sizes: the demo (4 models) should take about a minute on two CPU cores
DATA_SIZES = {
    "n_neurons": 24,
    "n_train": 240,
    "n_validation": 60,
    "n_test_images": 12,
    "n_repeats": 4,
    "image_shape": (18, 32),
}


def make_demo_data(folder: Path, seed: int = 0) -> Path:
    """Write (or reuse) the demo's synthetic Sensorium-format dataset in ``folder``; return its path."""
    from pipeline.data.synthetic import make_synthetic_dataset

    path = folder / "static90001-1-1-synthetic"
    if (path / "data").is_dir() and (path / "meta").is_dir():
        return path
    return Path(make_synthetic_dataset(path, seed=seed, session="90001-1-1", **DATA_SIZES))


def demo_grid(dataset_path: Path, epochs: int = 4) -> dict[str, Any]:
    """The demo's registration document: 1 dataset × 2 models × 1 trainer × 2 seeds.

    Args:
        dataset_path: the synthetic dataset folder (absolute, so every worker finds it).
        epochs: training epochs per model.
    """
    core = {"hidden_channels": 8, "input_kern": 5, "hidden_kern": 3, "layers": 2, "gamma_input": 1.0}
    return {
        "experiment": {"name": "demo", "comment": "sysid demo: two readouts on synthetic data, two seeds"},
        "seeds": [1, 2],
        "dataset": {
            "fn": "pipeline.data.static_loaders",
            "comment": "synthetic session with known receptive fields",
            "config": {"paths": [str(dataset_path)], "batch_size": 32},
        },
        "model": [
            {
                "fn": "pipeline.models.stacked_core_full_gauss_readout",
                "comment": "tiny core, Gaussian readout",
                "config": {**core, "init_sigma": 0.1, "init_mu_range": 0.3, "gamma_readout": 0.01},
            },
            {
                "fn": "pipeline.models.stacked_core_factorized_readout",
                "comment": "tiny core, factorized readout",
                "config": {**core},
            },
        ],
        "trainer": {
            "fn": "pipeline.training.standard_trainer",
            "config": {
                "max_iter": epochs,
                "lr_init": 0.01,
                "device": "auto",
                "verbose": False,
                "progress": False,
            },
        },
    }


def start_workers(n: int, env: dict[str, str], extra_args: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """Start ``n`` ``sysid worker --once`` processes (one torch thread each) with environment ``env``."""
    command = [sys.executable, "-m", "sysid", "worker", "--once", "--threads", "1", *extra_args]
    return [subprocess.Popen(command, env=env) for _ in range(n)]


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    import yaml

    header = "# written by `sysid demo`; register it again with `sysid register` (see --help)\n"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))


def run_demo(
    out_dir: Path, workers: int = 2, epochs: int = 4, keep: bool = False, console: Any = None
) -> None:
    """Run the demo end to end.

    Args:
        out_dir: folder for the dataset (``data/``), the grid file and the report (``report/``).
        workers: number of worker processes.
        epochs: training epochs per model.
        keep: keep earlier demo results instead of starting from an empty schema.
        console: a rich console for output (default: a new one).

    Raises:
        RuntimeError: a worker failed or some model did not train (see ``sysid errors``).
    """
    from rich.console import Console

    from schemas.settings import current_settings

    from .database import activate
    from .register import parse_plan, register_plan, validate_plan
    from .report import write_report
    from .report_data import fetch_report_data
    from .results import results_table, select_rows

    console = console or Console()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the demo's own schema unless the user chose one; the workers get it through their environment
    prefix = current_settings(default_prefix=DEMO_PREFIX).schema_prefix
    started = time.monotonic()

    console.rule("1. synthetic dataset")
    data_path = make_demo_data(out_dir / "data")
    console.print(f"dataset: {data_path}")

    console.rule("2. register")
    schemas = activate(prefix)
    if not keep:
        schemas.drop_all()  # a fresh demo schema: every model is trained in this run
        schemas = activate(prefix)
    doc = demo_grid(data_path, epochs=epochs)
    _write_yaml(out_dir / "demo_grid.yaml", doc)
    plan = parse_plan(doc, source="demo grid")
    validate_plan(plan, source="demo grid")
    register_plan(plan, schemas)
    console.print(
        f"registered {plan.n_combinations} models (grid in {out_dir / 'demo_grid.yaml'}), schema prefix {prefix!r}"
    )

    console.rule(f"3. {workers} worker(s)")
    processes = start_workers(workers, {**os.environ, "SYSID_SCHEMA_PREFIX": prefix})
    codes = _wait(processes)
    if any(codes):
        raise RuntimeError(f"worker exit codes {codes}: see the log above and `sysid errors`")

    console.rule("4. results")
    table = select_rows(schemas.results())
    console.print(results_table(table))
    if len(table) < plan.n_combinations:
        raise RuntimeError(f"only {len(table)} of {plan.n_combinations} models trained: see `sysid errors`")

    console.rule("5. report of the best model")
    data = fetch_report_data(schemas)
    paths = write_report(out_dir / "report", neurons=data.neurons, progress=data.progress, title=data.title)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(
        f"\ndemo finished in {time.monotonic() - started:.0f} s. Explore with "
        f"`SYSID_SCHEMA_PREFIX={prefix} sysid results` / `sysid status` / `sysid report --best`."
    )


def _wait(processes: list[subprocess.Popen]) -> list[int]:
    """Wait for the workers; on Ctrl-C forward SIGTERM so each checkpoints and releases its job."""
    try:
        return [p.wait() for p in processes]
    except KeyboardInterrupt:
        for p in processes:
            p.terminate()
        return [p.wait() for p in processes]
