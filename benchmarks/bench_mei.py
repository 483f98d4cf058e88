"""Ensembles and MEIs on synthetic ground truth, with the speed of batched vs one-by-one MEI optimisation.

A synthetic LN dataset (pipeline.data.synthetic) is made; ``--seeds`` seeds of a Gaussian-readout
model are trained on it and averaged into an :class:`~pipeline.models.EnsembleEncoder`. It prints:

* the test correlation of every member and of the ensemble (ensemble minus best member);
* for the neurons the ensemble predicts well (test correlation > 0.5), the correlation of each MEI
  with the neuron's true linear filter (``linear_filters``): median |r| per member and for the ensemble;
* neurons per minute of MEI optimisation, batched (one optimisation of N images) vs one-by-one
  (the same optimisation, one neuron per call), for one member and for the ensemble, and the ratio.
  Both give the same images (each neuron's start depends only on the seed and the neuron).

Usage: ``python benchmarks/bench_mei.py [--neurons 60] [--train 1000] [--epochs 30] [--seeds 3]
[--height 20 --width 36] [--threads 2] [--one-by-one 20] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data import make_synthetic_dataset, static_loaders
from pipeline.data.synthetic import linear_filters
from pipeline.mei import MEIConfig, data_reference, optimize_meis
from pipeline.models import EnsembleEncoder, stacked_core_full_gauss_readout
from pipeline.scoring import score_model
from pipeline.training import standard_trainer

KEY = "90001-1-1"
# the small model of tests/test_mei.py. At 36x64 pixels small models of this synthetic data sit on an
# initial plateau for a seed-dependent number of epochs (some seeds do not leave it within 40 epochs),
# so the default size is 20x36, where every seed trains within a few epochs.
MODEL = dict(
    hidden_channels=8,
    layers=2,
    input_kern=7,
    hidden_kern=5,
    gamma_input=1.0,
    gamma_readout=0.005,
    init_mu_range=0.5,
    init_sigma=0.3,
    gauss_type="full",
    pad_input=False,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 0, "final_tanh": False},
)


def filter_correlations(images: torch.Tensor, filters: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    return np.array(
        [np.corrcoef(images[i, 0].numpy().ravel(), filters[n].ravel())[0, 1] for i, n in enumerate(neurons)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=60)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--height", type=int, default=20)
    parser.add_argument("--width", type=int, default=36)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--one-by-one", type=int, default=20, help="neurons optimised one by one for the speed comparison"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per speed measurement (best counts)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.height, args.width)
    config = MEIConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_synthetic_dataset(
            Path(tmp) / f"static{KEY}-mei",
            n_neurons=args.neurons,
            n_train=args.train,
            n_validation=max(200, args.train // 8),
            n_test_images=50,
            n_repeats=10,
            image_shape=shape,
            seed=0,
        )
        loaders = static_loaders([str(path)], batch_size=32, seed=0, use_cache=False)
        filters = linear_filters(path)
    data_range = data_reference(loaders["train"][KEY]).pixel_range
    print(
        f"synthetic: {args.neurons} neurons, {args.train} train images of {args.height}x{args.width}; "
        f"{args.seeds} seeds x {args.epochs} epochs; threads {args.threads}; load {os.getloadavg()[0]:.2f}"
    )

    members = []
    for seed in range(args.seeds):
        model = stacked_core_full_gauss_readout(loaders, seed=seed, **MODEL)
        start = time.perf_counter()
        _, output, _ = standard_trainer(
            model, loaders, seed=seed, device="cpu", max_iter=args.epochs, lr_init=0.01, patience=4,
            lr_decay_steps=2, progress=False,
        )  # fmt: skip
        print(f"  trained seed {seed} in {time.perf_counter() - start:.0f} s ({output['epochs']} epochs)")
        members.append(model.eval())
    ensemble = EnsembleEncoder(members)

    def test_correlation(model) -> np.ndarray:
        return score_model(model, {"test": loaders["test"]})["test"][KEY]["correlation"]

    member_corr = [test_correlation(m) for m in members]
    ensemble_corr = test_correlation(ensemble)
    best = max(c.mean() for c in member_corr)
    print(
        "test correlation: members "
        + ", ".join(f"{c.mean():.4f}" for c in member_corr)
        + f"; ensemble {ensemble_corr.mean():.4f} (ensemble - best member {ensemble_corr.mean() - best:+.4f})"
    )

    good = np.flatnonzero(ensemble_corr > 0.5)
    print(f"MEIs ({config.model_dump()}) of {len(good)} neurons with ensemble test correlation > 0.5:")
    speeds = {}
    for name, model in [*((f"member {i}", m) for i, m in enumerate(members)), ("ensemble", ensemble)]:
        result = optimize_meis(model, KEY, good, (1, *shape), config, seed=0, data_range=data_range)
        r = filter_correlations(result.images, filters, good)
        print(
            f"  {name:>9}: median |r| with the true filter {np.median(np.abs(r)):.3f} (min {r.min():.3f}, "
            f"positive {np.mean(r > 0):.0%}), mean steps {result.steps.float().mean():.0f}, "
            f"activation {result.activations.mean():.2f}, {result.seconds:.1f} s"
        )
        if name in ("member 0", "ensemble"):
            subset = good[: args.one_by_one]

            def rate(batch_size: int | None, model=model, subset=subset) -> tuple[float, torch.Tensor]:
                """Neurons per minute, best of --repeats runs (the load of a shared machine varies)."""
                best_seconds, images = float("inf"), None
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    images = optimize_meis(
                        model,
                        KEY,
                        subset,
                        (1, *shape),
                        config,
                        seed=0,
                        data_range=data_range,
                        batch_size=batch_size,
                    ).images
                    best_seconds = min(best_seconds, time.perf_counter() - start)
                return len(subset) / best_seconds * 60, images

            batched_rate, batched_images = rate(None)
            single_rate, single_images = rate(1)
            same = float((batched_images - single_images).abs().max())
            speeds[name] = (batched_rate, single_rate, same, len(subset))
    print(f"neurons per minute (load {os.getloadavg()[0]:.2f}):")
    for name, (batched_rate, single_rate, same, n) in speeds.items():
        print(
            f"  {name:>9}: batched {batched_rate:.0f}, one-by-one {single_rate:.0f} "
            f"({batched_rate / single_rate:.1f}x; {n} neurons; max image difference {same:.1e})"
        )


if __name__ == "__main__":
    main()
