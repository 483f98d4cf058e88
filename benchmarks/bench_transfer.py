"""The data-efficiency curve of transfer learning (Lurz et al. 2021) on synthetic multi-session data.

Sessions made by ``pipeline.data.synthetic.make_multi_session_datasets``: every session's neurons read
the same Gabor-energy features (a nonlinear basis) at their own receptive-field positions. A core is
trained on the source sessions; then the new session is fitted with (a) the pretrained core frozen and
a new readout and (b) a model trained from scratch, on 5%, 10%, 25%, 50% and 100% of its training
images, with the same trainer. It prints the test correlation (single trial, and to the average of
the repeats) of each, their ratio, and writes a PNG of the two curves.

Usage: ``python benchmarks/bench_transfer.py [--threads 2] [--out transfer_curve.png]
[--fractions 0.05,0.1,0.25,0.5,1.0] [--target-train 1000] [--epochs 40]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import measures
from pipeline.data import static_loaders
from pipeline.data.synthetic import make_multi_session_datasets
from pipeline.models import data_info_from_loaders, stacked_core_full_gauss_readout
from pipeline.models.transfer import TransferRecipe, transfer
from pipeline.training import standard_trainer

MODEL = dict(
    hidden_channels=16,
    layers=3,
    input_kern=9,
    hidden_kern=5,
    gamma_input=1.0,
    gamma_readout=0.005,
    init_mu_range=0.5,
    init_sigma=0.3,
    grid_mean_predictor=None,
)


def _trainer(epochs: int) -> dict:
    return dict(device="cpu", max_iter=epochs, patience=4, lr_decay_steps=2, verbose=False, progress=False)


def _test_scores(model, loaders) -> tuple[float, float]:
    model.eval()
    single = float(measures.get_correlations(model, loaders["test"], device="cpu", per_neuron=False))
    average = float(np.nanmean(measures.get_signal_correlations(model, loaders["test"], device="cpu")))
    return single, average


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", type=int, default=4, help="number of source sessions")
    parser.add_argument("--neurons", type=int, default=40, help="neurons per session")
    parser.add_argument("--source-train", type=int, default=800, help="train images per source session")
    parser.add_argument("--target-train", type=int, default=1000, help="train images of the new session")
    parser.add_argument("--fractions", default="0.05,0.1,0.25,0.5,1.0")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("transfer_curve.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as root:
        paths = make_multi_session_datasets(
            root,
            n_sessions=args.sources + 1,
            n_neurons=args.neurons,
            n_train=[args.source_train] * args.sources + [args.target_train],
            n_validation=200,
            n_test_images=25,
            n_repeats=8,
            image_shape=(24, 40),
        )
        source_loaders = static_loaders([str(p) for p in paths[:-1]], batch_size=64, seed=0)
        source = stacked_core_full_gauss_readout(source_loaders, seed=0, **MODEL)
        t0 = time.time()
        score, _, _ = standard_trainer(source, source_loaders, seed=0, **_trainer(args.epochs))
        print(
            f"source core: {args.sources} sessions, validation correlation {score:.3f}, {time.time() - t0:.0f} s"
        )
        source_state = source.state_dict()
        rows = []
        for fraction in fractions:
            n_images = max(8, int(round(fraction * args.target_train)))
            loaders = static_loaders(
                [str(paths[-1])], batch_size=32, seed=0, image_n=n_images, image_base_seed=1
            )
            result = {"fraction": fraction, "images": n_images}
            for variant in ("transfer", "scratch"):
                t0 = time.time()
                model = stacked_core_full_gauss_readout(loaders, seed=1, **MODEL)
                if variant == "transfer":
                    info = data_info_from_loaders(loaders, mean_activity=True)
                    mean = {k: v["mean_activity"] for k, v in info.items()}
                    transfer(model, source_state, TransferRecipe(freeze_core=True), mean_activity=mean)
                standard_trainer(model, loaders, seed=1, **_trainer(args.epochs))
                single, average = _test_scores(model, loaders)
                result[f"{variant}_test_corr"] = single
                result[f"{variant}_test_corr_to_avg"] = average
                result[f"{variant}_seconds"] = time.time() - t0
            rows.append(result)
            print(
                f"{fraction:>5.0%} ({n_images:4d} images): frozen core {result['transfer_test_corr']:.3f}, "
                f"from scratch {result['scratch_test_corr']:.3f}",
                flush=True,
            )
    print()
    print(
        "| train images | frozen pretrained core | from scratch | ratio | core: corr. to average | scratch: corr. to average |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['fraction']:.0%} ({r['images']}) | {r['transfer_test_corr']:.3f} | {r['scratch_test_corr']:.3f} | "
            f"{r['transfer_test_corr'] / r['scratch_test_corr']:.2f} | {r['transfer_test_corr_to_avg']:.3f} | "
            f"{r['scratch_test_corr_to_avg']:.3f} |"
        )
    print(f"\ntotal {time.time() - started:.0f} s on {args.threads} threads")
    _plot(rows, args.out)
    return rows


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [r["images"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(
        images, [r["transfer_test_corr"] for r in rows], "o-", label="frozen pretrained core + new readout"
    )
    ax.plot(images, [r["scratch_test_corr"] for r in rows], "s-", label="trained from scratch")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the new session")
    ax.set_ylabel("test correlation (single trial)")
    ax.set_title("Transfer: data efficiency (synthetic, Gabor energy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
