"""Training speed: our trainer and data pipeline vs the same model and schedule built from neuralpredictors 0.3.0.

The throughput ratio the project quotes is measured against sensorium's own pipeline by
``bench_throughput.py`` (whole epochs, sensorium's loaders, builder and trainer); this script's peer
is a loop written here over neuralpredictors parts, kept for ``--converge`` (ours trained to
convergence with the full SOTA schedule).

Both sides train the Sensorium 2022 SOTA configuration (COMPAT.md §3; core without conv biases as in
sensorium's builder) on the real Lurz 2020 subset (images already 36 × 64, so scale=1), with the
same seed, the same initial weights (ours are copied into the peer model with ``strict=True``), the
same number of epochs and the same thread count, in one process:

* ours: ``static_loaders`` (in-memory tensors) → ``stacked_core_full_gauss_readout`` →
  ``standard_trainer``;
* peer: ``FileTreeDataset`` + ``NeuroNormalizer`` + ``ToTensor`` with torch ``DataLoader`` s and
  ``SubsetRandomSampler`` / ``SubsetSequentialSampler`` (sensorium's ``static_loader``),
  ``Stacked2dCore`` + ``FullGaussian2d`` in a ``MultiReadoutSharedParametersBase`` +
  ``FiringRateEncoder``, trained by a loop written here with sensorium's ``standard_trainer``
  semantics (``PoissonLoss(avg=False)``, ``LongCycler``, ``early_stopping``, ``ReduceLROnPlateau``,
  loss scale sqrt(len(dataset) / batch) where the peer's dataset length counts every tier).

Printed: seconds per epoch (training + validation, the initial evaluation excluded) for both and
the ratio of the median epochs (goal ≥ 2×), and the validation correlation after the epochs for both
(goal: equal within ±0.005; the sides differ in shuffling streams and in the loss scale noted above,
so only approximately equal numbers are expected after few epochs).

Usage: ``python benchmarks/bench_training.py [--epochs 3] [--threads 2] [--path DATASET]
[--train-n N] [--skip-peer] [--shuffle-seeds 1 2] [--converge --max-iter 200]``; ``--train-n N`` trains both sides on the
first N train trials only (a CPU needs minutes per full epoch); ``--converge`` then also trains ours
with the full SOTA schedule (early stopping) and prints its validation correlation and wall time.
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

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "lurz2020-static20457-5-9-trainval-1000" / "static20457-5-9-preproc0"

SOTA_TRAINER = dict(
    lr_init=0.009,
    lr_decay_steps=4,
    avg_loss=False,
    patience=5,
    tolerance=1e-6,
    lr_decay_factor=0.3,
    min_lr=1e-4,
)
BATCH_SIZE = 128


# ----------------------------------------------------------------------------------------------------
# ours


def first_train_trials(path: str, train_n: int | None) -> np.ndarray | None:
    """Indices of the first ``train_n`` train-tier trials (file order), or None for all."""
    if train_n is None:
        return None
    tiers = np.load(Path(path) / "meta" / "trials" / "tiers.npy").astype(str)
    return np.flatnonzero(tiers == "train")[:train_n]


def train_ours(
    path: str,
    seed: int,
    epochs: int,
    cache_dir: str,
    train_trials: np.ndarray | None,
    shuffle_seed: int | None = None,
) -> dict:
    from pipeline.data import static_loaders
    from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG, stacked_core_full_gauss_readout
    from pipeline.training import standard_trainer

    start = time.perf_counter()
    image_ids = None
    if train_trials is not None:
        frame_ids = np.load(Path(path) / "meta" / "trials" / "frame_image_id.npy")
        image_ids = [[int(i) for i in frame_ids[train_trials]]]
    loaders = static_loaders(
        [path],
        batch_size=BATCH_SIZE,
        seed=seed if shuffle_seed is None else shuffle_seed,
        normalize=True,
        cache_dir=cache_dir,
        image_ids=image_ids,
    )
    load_s = time.perf_counter() - start
    model = stacked_core_full_gauss_readout(loaders, seed=seed, **SENSORIUM_SOTA_MODEL_CONFIG)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    score, output, _ = standard_trainer(
        model,
        loaders,
        seed=seed,
        device="cpu",
        max_iter=epochs,
        progress=False,
        verbose=False,
        **SOTA_TRAINER,
    )
    return {
        "load_s": load_s,
        "epoch_s": output["epoch_seconds"],
        "val": output["val_correlation"],
        "score": score,
        "initial_state": initial,
        "loaders": loaders,
    }


# ----------------------------------------------------------------------------------------------------
# peer (neuralpredictors 0.3.0 parts, sensorium's semantics; written here, not imported from sensorium)


def peer_loaders(path: str, batch_size: int, data_key: str, train_trials: np.ndarray | None) -> dict:
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.samplers import SubsetSequentialSampler
    from neuralpredictors.data.transforms import NeuroNormalizer, Subsample, ToTensor
    from torch.utils.data import DataLoader
    from torch.utils.data.sampler import SubsetRandomSampler

    dataset = FileTreeDataset(path, "images", "responses")
    neurons = np.arange(len(dataset.neurons.unit_ids))
    dataset.transforms.extend([NeuroNormalizer(dataset), Subsample(neurons), ToTensor(False)])
    tiers = dataset.trial_info.tiers
    loaders = {}
    for tier in ("train", "validation"):
        index = np.where(tiers == tier)[0] if tier != "train" or train_trials is None else train_trials
        sampler = SubsetRandomSampler(index) if tier == "train" else SubsetSequentialSampler(index)
        loaders[tier] = {data_key: DataLoader(dataset, sampler=sampler, batch_size=batch_size)}
    return loaders


def peer_correlation(model: torch.nn.Module, loaders: dict) -> float:
    """Sensorium's get_correlations: per-neuron correlation of predictions over the tier, mean over neurons."""
    from neuralpredictors.measures.np_functions import corr

    values = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for key, loader in loaders.items():
            targets, outputs = [], []
            for batch in loader:
                outputs.append(model(batch[0], data_key=key, **batch._asdict()).cpu())
                targets.append(batch[1].cpu())
            c = corr(torch.cat(targets).numpy(), torch.cat(outputs).numpy(), axis=0)
            values.append(np.nan_to_num(c))
    model.train(was_training)
    return float(np.mean(np.hstack(values)))


def train_peer(
    path: str, seed: int, epochs: int, initial_state: dict, data_key: str, train_trials: np.ndarray | None
) -> dict:
    from neuralpredictors.measures.modules import PoissonLoss
    from neuralpredictors.training import LongCycler, early_stopping

    from pipeline.utils import set_seed
    from tests.peer import peer_sota_model

    start = time.perf_counter()
    loaders = peer_loaders(path, BATCH_SIZE, data_key, train_trials)
    dataset = loaders["train"][data_key].dataset
    load_s = time.perf_counter() - start
    first = dataset[0]
    model = peer_sota_model(
        data_key,
        first.responses.shape[0],
        dataset.neurons.cell_motor_coordinates,
        tuple(first.images.shape[-2:]),
    )
    model.load_state_dict(initial_state, strict=True)  # the same initial weights as ours

    set_seed(seed)
    model.train()
    criterion = PoissonLoss(avg=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=SOTA_TRAINER["lr_init"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.3, patience=5, threshold=1e-6, threshold_mode="abs", min_lr=1e-4
    )
    train = loaders["train"]
    step_every = len(train)
    train_s, eval_s, vals = [], [], []

    def objective(m: torch.nn.Module) -> float:
        tick = time.perf_counter()
        value = peer_correlation(m, loaders["validation"])
        eval_s.append(time.perf_counter() - tick)
        vals.append(value)
        return value

    stop = early_stopping(
        model,
        objective,
        interval=1,
        patience=5,
        start=0,
        max_iter=epochs,
        maximize=True,
        tolerance=1e-6,
        restore_best=True,
        scheduler=scheduler,
        lr_decay_steps=SOTA_TRAINER["lr_decay_steps"],
    )
    for _epoch, _objective in stop:
        tick = time.perf_counter()
        optimizer.zero_grad()
        for batch_no, (key, batch) in enumerate(LongCycler(train)):
            scale = np.sqrt(len(train[key].dataset) / batch[0].shape[0])
            regularizers = model.core.regularizer() + model.readout.regularizer(key)
            loss = (
                scale * criterion(model(batch[0], data_key=key, **batch._asdict()), batch[1]) + regularizers
            )
            loss.backward()
            if (batch_no + 1) % step_every == 0:
                optimizer.step()
                optimizer.zero_grad()
        train_s.append(time.perf_counter() - tick)
    # an epoch = its training + the evaluation after it (evaluation 0 scores the untrained model; the
    # generator's extra evaluations when it restores the best state at the end are not counted)
    epoch_s = [train_s[k] + eval_s[k + 1] for k in range(len(train_s))]
    score = peer_correlation(model, loaders["validation"])
    return {"load_s": load_s, "epoch_s": epoch_s, "val": vals[1 : len(train_s) + 1], "score": score}


# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default=str(REAL))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--train-n", type=int, default=None, help="use only the first N train trials (both sides)"
    )
    parser.add_argument("--converge", action="store_true", help="also train ours with the full SOTA schedule")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument(
        "--shuffle-seeds",
        type=int,
        nargs="*",
        default=[],
        help="also train ours with these shuffling seeds (same initial weights): the spread of the validation "
        "correlation that the batch order alone causes, to judge the ours-vs-peer difference",
    )
    args = parser.parse_args()
    if not Path(args.path).exists():
        raise SystemExit(f"dataset not found: {args.path}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    with tempfile.TemporaryDirectory() as cache_dir:
        train_trials = first_train_trials(args.path, args.train_n)
        ours = train_ours(args.path, args.seed, args.epochs, cache_dir, train_trials)
        ours_epoch = float(np.median(ours["epoch_s"]))  # median: robust to a noisy (shared) machine
        n_train = len(next(iter(ours["loaders"]["train"].values())).dataset)
        print(
            f"threads={args.threads} epochs={args.epochs} seed={args.seed} batch={BATCH_SIZE} device=cpu "
            f"train trials={n_train}"
        )
        print(
            f"ours: load {ours['load_s']:.1f} s, s/epoch {ours_epoch:.2f} {np.round(ours['epoch_s'], 2).tolist()}"
        )
        print(f"ours: val corr per epoch {np.round(ours['val'], 4).tolist()}, final {ours['score']:.4f}")
        if not args.skip_peer:
            sys.path.insert(0, str(REPO))  # run as a script: make the repository's tests package importable
            from tests.peer import import_neuralpredictors

            import_neuralpredictors()
            data_key = next(iter(ours["loaders"]["train"]))
            peer = train_peer(
                args.path, args.seed, args.epochs, ours["initial_state"], data_key, train_trials
            )
            peer_epoch = float(np.median(peer["epoch_s"]))
            print(
                f"peer: load {peer['load_s']:.1f} s, s/epoch {peer_epoch:.2f} {np.round(peer['epoch_s'], 2).tolist()}"
            )
            print(f"peer: val corr per epoch {np.round(peer['val'], 4).tolist()}, final {peer['score']:.4f}")
            print(
                f"speed-up (median peer s/epoch / median ours s/epoch): {peer_epoch / ours_epoch:.2f}x (goal >= 2x)"
            )
            print(
                f"val corr difference ours - peer: {ours['score'] - peer['score']:+.4f} (goal within ±0.005)"
            )
        if args.shuffle_seeds:
            finals = [ours["score"]]
            for shuffle_seed in args.shuffle_seeds:
                other = train_ours(args.path, args.seed, args.epochs, cache_dir, train_trials, shuffle_seed)
                finals.append(other["score"])
                print(
                    f"ours, shuffle seed {shuffle_seed}: val corr per epoch {np.round(other['val'], 4).tolist()}"
                )
            print(
                f"ours over {len(finals)} batch orders: val corr {np.mean(finals):.4f} ± {np.std(finals):.4f} "
                f"(range {min(finals):.4f}–{max(finals):.4f})"
            )
        if args.converge:
            from pipeline.models.builders import SENSORIUM_SOTA_MODEL_CONFIG, stacked_core_full_gauss_readout
            from pipeline.training import standard_trainer

            loaders = ours["loaders"]
            model = stacked_core_full_gauss_readout(loaders, seed=args.seed, **SENSORIUM_SOTA_MODEL_CONFIG)
            start = time.perf_counter()
            score, output, _ = standard_trainer(
                model,
                loaders,
                seed=args.seed,
                device="cpu",
                max_iter=args.max_iter,
                progress=False,
                verbose=False,
                **SOTA_TRAINER,
            )
            print(
                f"ours to convergence: val corr {score:.4f}, {output['epochs']} epochs (best {output['best_epoch']}, "
                f"stopped by {output['stopped_by']}), {time.perf_counter() - start:.0f} s"
            )


if __name__ == "__main__":
    main()
