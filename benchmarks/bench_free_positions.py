"""Ground truth with free readout positions: ours vs sensorium + neuralpredictors, side by side.

For each seed, a synthetic dataset with known receptive fields (pipeline.data.synthetic; 60 neurons,
36 x 64 images, 600 train images, the generator's default validation and test tiers) is trained on
twice with the same configuration — the Sensorium 2022 SOTA model and trainer configuration with a
3-layer, 16-channel depth-separable core and a FullGaussian2d readout with *free* positions (no cortex
grid predictor), batch 64, 30 epochs:

* ours: ``pipeline`` loaders, builder and trainer;
* peer: sensorium's ``static_loaders``, ``stacked_core_full_gauss_readout`` and ``standard_trainer``
  (neuralpredictors 0.3.0), imported through the test shims (``tests/sensorium_peer.py``).

Both models are then scored by the same code on the same test trials: RF position recovery (the
correlation of the learned readout positions, mapped to image grid units, with the true RF centres,
x and y), the mean test correlation and seconds per epoch. Printed per seed and as mean ± standard
deviation over seeds. ``--variant before`` reproduces ours as it was before the loss scale and bias
initialisation followed sensorium (train-tier loss scale, biases initialised to the mean response;
``train-scale`` / ``mean-bias``: one of the two), to show what changed. ``--same-batches`` adds ours
trained on sensorium's loaders: the same batches and samples as the peer run, seed by seed.

Usage: ``python benchmarks/bench_free_positions.py [--seeds 1 2 3 4] [--epochs 30] [--threads 2]
[--variant current|before|train-scale|mean-bias] [--skip-peer] [--same-batches]`` (run it under the shared lock: it trains 2 x seeds models).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# the generator's default tiers (250 validation images, 50 test images x 10 repeats) around 600 train images
DATASET = dict(n_neurons=60, n_train=600, image_shape=(36, 64))
LOADER = dict(batch_size=64, normalize=True, include_behavior=False, include_eye_position=False, cuda=False)
# the Sensorium 2022 SOTA configuration with a 3-layer, 16-channel core and free positions
MODEL = dict(
    pad_input=False,
    stack=-1,
    layers=3,
    input_kern=9,
    gamma_input=6.3831,
    gamma_readout=0.0076,
    hidden_kern=7,
    hidden_channels=16,
    depth_separable=True,
    grid_mean_predictor=None,
    init_sigma=0.1,
    init_mu_range=0.3,
    gauss_type="full",
    shifter=False,
    core_bias=False,
)
TRAINER = dict(lr_init=0.009, lr_decay_steps=4, avg_loss=False, device="cpu", verbose=False)


def readout_to_image_grid(mu: np.ndarray, n_out: int, n_image: int) -> np.ndarray:
    """Readout grid units of a centred core output of ``n_out`` pixels → image grid units."""
    pixel = (mu + 1) / 2 * (n_out - 1) + (n_image - n_out) / 2
    return pixel / (n_image - 1) * 2 - 1


def score(
    model: torch.nn.Module, readout_mu: torch.Tensor, loaders: dict, truth: dict, seconds: float, epochs: int
):
    """Position recovery x/y, test correlation (our measures, our loaders), seconds per epoch."""
    from pipeline import measures
    from pipeline.utils import get_module_output

    h, w = DATASET["image_shape"]
    _, _, out_h, out_w = get_module_output(model.core, (1, 1, h, w))
    raw = readout_mu.detach().reshape(-1, 2).double()
    outside = float((raw.abs() > 1).any(dim=1).double().mean())  # position parameters beyond the map
    mu = raw.clamp(-1, 1).numpy()
    mu_x = readout_to_image_grid(mu[:, 0], out_w, w)
    mu_y = readout_to_image_grid(mu[:, 1], out_h, h)
    model.eval()
    test = measures.get_correlations(model, loaders, tier="test", device="cpu")
    return {
        "x": float(np.corrcoef(mu_x, truth["rf_x"])[0, 1]),
        "y": float(np.corrcoef(mu_y, truth["rf_y"])[0, 1]),
        "test": float(np.mean(test)),
        "s_per_epoch": seconds / max(epochs, 1),
        "epochs": epochs,
        "outside": outside,
    }


def train_ours(path: str, seed: int, epochs: int, truth: dict, variant: str) -> dict:
    from pipeline.data import static_loaders
    from pipeline.models import data_info_from_loaders, stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    loaders = static_loaders([path], seed=seed, use_cache=False, **LOADER)
    model = stacked_core_full_gauss_readout(loaders, seed=seed, **MODEL)
    config = dict(TRAINER, max_iter=epochs, progress=False)
    if variant in ("before", "train-scale"):  # the previous loss scale: the train tier's trial count
        config["loss_scale_trials"] = "train"
    if variant in ("before", "mean-bias"):  # the previous initial biases: each neuron's mean response
        (key,) = loaders["train"]
        mean = data_info_from_loaders(loaders, mean_activity=True)[key]["mean_activity"]
        with torch.no_grad():
            model.readout[key].bias.copy_(torch.tensor(mean))
    start = time.perf_counter()
    _, output, _ = standard_trainer(model, loaders, seed=seed, **config)
    seconds = time.perf_counter() - start
    (key,) = loaders["train"]
    return score(model, model.readout[key].mu, loaders, truth, seconds, output["epochs"])


def peer_loaders(sensorium, path: str, seed: int, copy_dir: Path) -> dict:
    """sensorium's loaders; the evaluation tiers get their own generator.

    Iterating a ``DataLoader`` without one draws a seed from the global generator, which also drives
    the train shuffle and the readouts' position samples; sensorium's early stopping evaluates twice
    more than ours at every learning-rate decay, which would shift the whole random stream of the rest
    of the run. With their own generator the evaluation loaders draw nothing from it (their order is
    sequential anyway); the train loaders are sensorium's, shuffled from the global generator.
    """
    from torch.utils.data import DataLoader

    from tests.sensorium_peer import peer_copy

    loaders = sensorium.datasets.static_loaders([peer_copy(Path(path), copy_dir)], seed=seed, **LOADER)
    for tier in ("validation", "test"):
        for key, loader in loaders[tier].items():
            loaders[tier][key] = DataLoader(
                loader.dataset,
                sampler=loader.sampler,
                batch_size=loader.batch_size,
                generator=torch.Generator(),
            )
    return loaders


def train_peer(sensorium, path: str, seed: int, epochs: int, truth: dict, copy_dir: Path) -> dict:
    from pipeline.data import static_loaders
    from tests.sensorium_peer import scheduler_without_verbose

    loaders = peer_loaders(sensorium, path, seed, copy_dir)
    model = sensorium.models.stacked_core_full_gauss_readout(loaders, seed=seed, **MODEL)
    epoch_count = {"n": 0}

    def count_epochs(*args, **kwargs):
        epoch_count["n"] += 1

    start = time.perf_counter()
    with scheduler_without_verbose():
        sensorium.training.standard_trainer(
            model, loaders, seed=seed, max_iter=epochs, cb=count_epochs, **TRAINER
        )
    seconds = time.perf_counter() - start
    (key,) = loaders["train"]
    ours_loaders = static_loaders([path], seed=seed, use_cache=False, **LOADER)  # the same scoring data
    return score(model, model.readout[key].mu, ours_loaders, truth, seconds, epoch_count["n"])


def train_ours_on_peer_batches(
    sensorium, path: str, seed: int, epochs: int, truth: dict, copy_dir: Path
) -> dict:
    """Our model and trainer fed sensorium's loaders (see :func:`peer_loaders`): the same batches in
    the same order and the same readout samples as the peer run of this seed, so the two runs differ
    only by the implementations (and float rounding, which training amplifies)."""
    from pipeline.data import static_loaders
    from pipeline.models import stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    loaders = peer_loaders(sensorium, path, seed, copy_dir)
    model = stacked_core_full_gauss_readout(loaders, seed=seed, **MODEL)
    start = time.perf_counter()
    _, output, _ = standard_trainer(model, loaders, seed=seed, max_iter=epochs, progress=False, **TRAINER)
    seconds = time.perf_counter() - start
    (key,) = loaders["train"]
    ours_loaders = static_loaders([path], seed=seed, use_cache=False, **LOADER)
    return score(model, model.readout[key].mu, ours_loaders, truth, seconds, output["epochs"])


def summary(rows: list[dict], key: str) -> str:
    values = np.array([r[key] for r in rows])
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--variant",
        choices=["current", "before", "train-scale", "mean-bias"],
        default="current",
        help="ours as now, or with the previous defaults: both, only the train-tier loss scale, only mean-response biases",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--same-batches",
        action="store_true",
        help="also train ours on the peer's loaders (the peer's batch order and samples, seed by seed)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore", category=UserWarning, module="neuralpredictors")
    from pipeline.data import load_ground_truth, make_synthetic_dataset

    sensorium = None
    if not args.skip_peer:
        from tests.sensorium_peer import load_sensorium

        sensorium = load_sensorium()
        # the peer's trainer draws a progress bar for every epoch: leave it out of the report
        sys.modules["sensorium.training.trainers"].tqdm = lambda iterable, **kwargs: iterable
    print(
        f"free positions: {DATASET['n_neurons']} neurons, {DATASET['image_shape'][0]}x{DATASET['image_shape'][1]}, "
        f"{DATASET['n_train']} train images, batch {LOADER['batch_size']}, {args.epochs} epochs, "
        f"threads {args.threads}, ours = {args.variant}; load {open('/proc/loadavg').read().split()[:3]}"
    )
    rows: dict[str, list[dict]] = {"ours": [], "peer": [], "ours on the peer's batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = make_synthetic_dataset(Path(tmp) / f"static9040{seed}-1-1-free", seed=seed, **DATASET)
            truth = load_ground_truth(path)
            runs = {"ours": ("ours", train_ours, (str(path), seed, args.epochs, truth, args.variant))}
            if sensorium is not None:
                peer_args = (sensorium, str(path), seed, args.epochs, truth, Path(tmp) / "peer")
                runs["peer"] = ("peer", train_peer, peer_args)
                if args.same_batches:
                    runs["same"] = ("ours on the peer's batches", train_ours_on_peer_batches, peer_args)
            for name, run, run_args in runs.values():
                row = run(*run_args)
                rows[name].append(row)
                print(
                    f"seed {seed} {name}: position corr x {row['x']:.3f} y {row['y']:.3f}, test corr {row['test']:.3f}, "
                    f"{row['s_per_epoch']:.2f} s/epoch ({row['epochs']} epochs), "
                    f"{row['outside']:.0%} of the position parameters beyond [-1, 1]",
                    flush=True,
                )
    print(f"over {len(args.seeds)} seeds (mean ± sd):")
    for name, found in rows.items():
        if found:
            print(
                f"  {name}: position corr x {summary(found, 'x')}, y {summary(found, 'y')}; "
                f"test corr {summary(found, 'test')}; s/epoch {summary(found, 's_per_epoch')}"
            )
    print(f"load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
