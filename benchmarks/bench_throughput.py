"""Training throughput: seconds per epoch of ours vs sensorium's own pipeline, in one process.

The reference is the peer itself: sensorium's ``static_loaders`` (``FileTreeDataset`` read per item,
``cuda=False``) + sensorium's ``stacked_core_full_gauss_readout`` builder (neuralpredictors 0.3.0
parts) + sensorium's ``standard_trainer``, imported from ``shared/peers/sensorium`` through
:mod:`tests.sensorium_peer`. Ours: :func:`pipeline.data.static_loaders` +
:func:`pipeline.models.builders.stacked_core_full_gauss_readout` + :func:`pipeline.training.standard_trainer`.
Both train the Sensorium 2022 SOTA configuration from the same initial weights (ours are loaded
into the peer's model with ``strict=True``), with the same thread count, batch size and schedule.

Epochs: by default an epoch is the whole train tier (4472 trials on the real subset) + the
evaluation on the whole validation tier, as users run it; ``--steps K`` trains only on the first
K x batch-size train trials (file order; both sides identical) for quicker scaling runs. The first
epoch (it reads the files) is reported apart; the ratio uses the median of the steady-state
epochs. The peer's epoch times come from its ``cb`` hook, which sensorium's trainer calls at the
start of every epoch (so ``--epochs`` + 1 epochs are run on its side).

Neuron counts beyond the real subset's 1000 are made by tiling its neurons (responses, coordinates,
statistics; unit ids made unique) into a dataset under a temporary folder that both sides read.

Printed: per configuration (neurons, batch size, image scale) a row with ours' and the peer's
first-epoch and steady-state seconds per epoch and the ratio ours / peer, the same for the variants
asked for with ``--variants`` (ours again from the same weights and batches: ``kernels-off`` with
``SYSID_CPU_KERNELS=0``, i.e. PyTorch's own operations instead of :mod:`pipeline.kernels`;
``before`` also without the freed-memory reuse, i.e. ours as before the throughput work), and the
validation correlation after every epoch of each (the curves; ours and its variants share weights
and batches, so their curves must agree; the peer's differs by its own shuffling stream).

Usage: ``python benchmarks/bench_throughput.py [--neurons 1000 5335] [--steps K] [--epochs 3]
[--batch-size 128 ...] [--scale 1.0 ...] [--threads 2] [--skip-peer] [--small]
[--variants kernels-off before]``; ``--small`` uses the small configuration (a 3-layer 16-channel
core without the grid predictor) instead of the SOTA one. Neurons, batch sizes and scales given as
lists are run as every combination (the scaling table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's trainer draws a bar over batches

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "lurz2020-static20457-5-9-trainval-1000" / "static20457-5-9-preproc0"

TRAINER = dict(lr_init=0.009, lr_decay_steps=4, avg_loss=False, patience=5, tolerance=1e-6)
SMALL_MODEL = dict(
    pad_input=False,
    stack=-1,
    layers=3,
    input_kern=9,
    hidden_kern=7,
    hidden_channels=16,
    depth_separable=True,
    gamma_input=6.3831,
    gamma_readout=0.0076,
    init_sigma=0.1,
    init_mu_range=0.3,
    gauss_type="full",
    shifter=False,
    core_bias=False,
)


def tiled_dataset(source: Path, n_neurons: int, destination: Path) -> Path:
    """A copy of the file-tree dataset ``source`` with its neurons tiled to ``n_neurons``.

    Images, trials and the other data folders are linked; the responses (one file per trial), the
    neuron metadata and the response statistics are repeated along the neuron axis (cut to
    ``n_neurons``); the unit ids of the k-th copy are offset by k × (max id + 1) so they stay unique.
    ``source`` itself is returned when it already has ``n_neurons`` neurons.
    """
    unit_ids = np.load(source / "meta" / "neurons" / "unit_ids.npy")
    n_source = len(unit_ids)
    if n_neurons == n_source:
        return source
    target = destination / f"{source.name}-tiled{n_neurons}"
    if target.exists():
        return target
    reps = -(-n_neurons // n_source)
    index = np.tile(np.arange(n_source), reps)[:n_neurons]
    copy_no = np.repeat(np.arange(reps), n_source)[:n_neurons]
    shutil.copytree(source / "meta", target / "meta")
    shutil.copy(source / "config.json", target / "config.json")
    for file in (target / "meta" / "neurons").glob("*.npy"):
        values = np.load(file)[index]
        if file.name == "unit_ids.npy":
            values = values.astype(np.int64) + copy_no * (int(unit_ids.max()) + 1)
        np.save(file, values)
    for file in (target / "meta" / "statistics" / "responses").rglob("*.npy"):
        values = np.load(file)
        if values.ndim >= 1 and values.shape[0] == n_source:
            np.save(file, values[index])
    (target / "data").mkdir()
    for folder in (source / "data").iterdir():
        if folder.name != "responses":
            (target / "data" / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    (target / "data" / "responses").mkdir()
    for file in (source / "data" / "responses").iterdir():
        np.save(target / "data" / "responses" / file.name, np.load(file)[index])
    return target


def train_image_ids(path: Path, n_trials: int) -> list[int]:
    """Image ids of the first ``n_trials`` train-tier trials (file order)."""
    tiers = np.load(path / "meta" / "trials" / "tiers.npy").astype(str)
    frame_ids = np.load(path / "meta" / "trials" / "frame_image_id.npy")
    return [int(i) for i in frame_ids[np.flatnonzero(tiers == "train")[:n_trials]]]


def _image_ids(path: Path, args: argparse.Namespace) -> list[list[int]] | None:
    """The train trials of a ``--steps`` epoch (None: the whole train tier)."""
    return None if args.steps is None else [train_image_ids(path, args.steps * args.batch_size)]


def run_ours(path: Path, args: argparse.Namespace, model_config: dict, cache_dir: str, **trainer) -> dict:
    """Train ours for ``args.epochs``; seconds per epoch, validation curve, initial state."""
    from pipeline.data import static_loaders
    from pipeline.models.builders import stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    loaders = static_loaders(
        [str(path)],
        batch_size=args.batch_size,
        seed=args.seed,
        normalize=True,
        cache_dir=cache_dir,
        image_ids=_image_ids(path, args),
        scale=args.scale if args.scale != 1.0 else None,
    )
    model = stacked_core_full_gauss_readout(loaders, seed=args.seed, **model_config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    _, output, _ = standard_trainer(
        model,
        loaders,
        seed=args.seed,
        device="cpu",
        max_iter=args.epochs,
        progress=False,
        verbose=False,
        **TRAINER,
        **trainer,
    )
    return {"epoch_s": output["epoch_seconds"], "val": output["val_correlation"], "initial": initial}


def run_peer(path: Path, args: argparse.Namespace, model_config: dict, initial: dict, workdir: Path) -> dict:
    """Train sensorium's pipeline for ``args.epochs`` (+1, see the module docstring)."""
    sys.path.insert(0, str(REPO))
    from tests.sensorium_peer import load_sensorium, peer_shadow, scheduler_without_verbose

    sensorium = load_sensorium()
    peer_path = peer_shadow(path, workdir / "peer")
    loaders = sensorium.datasets.static_loaders(
        [peer_path],
        batch_size=args.batch_size,
        seed=args.seed,
        cuda=False,
        normalize=True,
        image_ids=_image_ids(path, args),
        scale=args.scale if args.scale != 1.0 else None,
    )
    model = sensorium.models.stacked_core_full_gauss_readout(loaders, seed=args.seed, **model_config)
    model.load_state_dict(initial, strict=True)
    ticks: list[float] = []
    copy_s: list[float] = []
    states: list[dict] = []

    def cb() -> None:  # called by the peer's trainer at the start of every epoch's training
        ticks.append(time.perf_counter())
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        copy_s.append(time.perf_counter() - ticks[-1])  # left out of the epoch it falls in

    with scheduler_without_verbose():
        sensorium.training.standard_trainer(
            model,
            loaders,
            seed=args.seed,
            device="cpu",
            max_iter=args.epochs + 1,
            verbose=False,
            restore_best=False,
            cb=cb,
            **TRAINER,
        )
    epoch_s = (np.diff(ticks) - np.asarray(copy_s[:-1])).tolist()
    val = []
    for state in states[1:]:
        model.load_state_dict(state)
        val.append(
            float(
                sensorium.utility.scores.get_correlations(
                    model, loaders["validation"], device="cpu", per_neuron=False
                )
            )
        )
    return {"epoch_s": epoch_s, "val": val}


def summary(epoch_s: list[float]) -> tuple[float, float]:
    """(first epoch, median of the others) seconds."""
    return epoch_s[0], float(np.median(epoch_s[1:])) if len(epoch_s) > 1 else float("nan")


VARIANTS = {
    # name: (environment overrides, trainer keywords)
    "kernels-off": ({"SYSID_CPU_KERNELS": "0"}, {}),
    "before": ({"SYSID_CPU_KERNELS": "0"}, {"reuse_cpu_memory": False}),
}


def run_variant(name: str, path: Path, args: argparse.Namespace, model_config: dict, cache_dir: str) -> dict:
    """``run_ours`` with a variant's environment and trainer keywords (restored afterwards)."""
    env, trainer = VARIANTS[name]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_ours(path, args, model_config, cache_dir, **trainer)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=REAL)
    parser.add_argument("--neurons", type=int, nargs="+", default=[1000, 5335])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps (train batches) per epoch; default: the whole train tier",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0], help="image scale (both sides)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--small", action="store_true", help="the small configuration instead of SOTA")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(VARIANTS),
        help="also train ours as these variants, from the same weights and batches",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not args.path.exists():
        raise SystemExit(f"dataset not found: {args.path}")
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first epoch is reported apart)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from pipeline.kernels import kernel_status
    from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG

    model_config = SMALL_MODEL if args.small else SENSORIUM_SOTA_MODEL_CONFIG
    print(
        f"config={'small' if args.small else 'SOTA'} threads={args.threads} "
        f"steps/epoch={args.steps or 'all'} epochs={args.epochs} torch={torch.__version__} "
        f"kernels={kernel_status().get('state')}"
    )
    header = "| neurons | batch | scale | ours first s | ours s/epoch | peer first s | peer s/epoch | ours / peer |"
    header += "".join(f" {v} s/epoch |" for v in args.variants)
    print(header)
    print("|" + "---:|" * (8 + len(args.variants)))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for n_neurons in args.neurons:
            path = tiled_dataset(args.path, n_neurons, workdir)
            for batch_size in args.batch_size:
                for scale in args.scale:
                    run_args = argparse.Namespace(**{**vars(args), "batch_size": batch_size, "scale": scale})
                    ours = run_ours(path, run_args, model_config, str(workdir / "cache"))
                    row = {"neurons": n_neurons, "batch": batch_size, "scale": scale}
                    row.update(ours=ours["epoch_s"], ours_val=ours["val"])
                    o_first, o_steady = summary(ours["epoch_s"])
                    text = f"| {n_neurons} | {batch_size} | {scale:g} | {o_first:.2f} | {o_steady:.2f} |"
                    if not args.skip_peer:
                        peer = run_peer(path, run_args, model_config, ours["initial"], workdir)
                        p_first, p_steady = summary(peer["epoch_s"][: args.epochs])
                        row.update(peer=peer["epoch_s"], peer_val=peer["val"])
                        text += f" {p_first:.2f} | {p_steady:.2f} | {o_steady / p_steady:.2f} |"
                    else:
                        text += " - | - | - |"
                    for name in args.variants:
                        variant = run_variant(name, path, run_args, model_config, str(workdir / "cache"))
                        row[name] = variant["epoch_s"]
                        row[f"{name}_val"] = variant["val"]
                        text += f" {summary(variant['epoch_s'])[1]:.2f} |"
                    print(text, flush=True)
                    results.append(row)
    for row in results:
        label = f"{row['neurons']} neurons, batch {row['batch']}, scale {row['scale']:g}"
        for side in ["ours", *args.variants, "peer"]:
            if f"{side}_val" in row:
                curve = np.round(row[f"{side}_val"], 4).tolist()
                extra = ""
                if side in args.variants:
                    gap = np.max(np.abs(np.asarray(row[f"{side}_val"]) - np.asarray(row["ours_val"])))
                    extra = f" (max |difference| from ours {gap:.2g})"
                print(f"{label}: {side} val corr per epoch {curve}{extra}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": results})
        )


if __name__ == "__main__":
    main()
