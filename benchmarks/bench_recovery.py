"""Ground-truth recovery at a larger size than tests/test_recovery.py, printing the numbers.

A synthetic dataset (pipeline.data.synthetic) is made from a known model; the Sensorium
Gaussian-readout model is trained on it with the standard trainer, once with readout positions
predicted from cortical coordinates (the SOTA ``grid_mean_predictor``) and once with free per-neuron
positions. For each it prints the correlation and mean absolute error (image pixels) of the learned
RF positions against the truth, after mapping readout grid units of the (smaller, unpadded) core
output to image grid units as described in tests/test_recovery.py, and the test correlation relative
to the jackknife oracle.

Usage: ``python benchmarks/bench_recovery.py [--neurons 100] [--train 2000] [--epochs 40]
[--height 36 --width 64] [--threads 2] [--variants cortex,free]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import measures
from pipeline.data import load_ground_truth, make_synthetic_dataset, static_loaders
from pipeline.models.builders import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from pipeline.utils import get_module_output

BASE_MODEL = dict(
    hidden_channels=16,
    layers=3,
    input_kern=9,
    hidden_kern=5,
    gamma_input=1.0,
    gamma_readout=0.005,
    init_mu_range=0.5,
    init_sigma=0.3,
    gauss_type="full",
    pad_input=False,
)
VARIANTS = {
    "cortex": {
        "grid_mean_predictor": {
            "type": "cortex",
            "input_dimensions": 2,
            "hidden_layers": 0,
            "final_tanh": False,
        }
    },
    "free": {"init_sigma": 0.5},
}


def readout_to_image_grid(mu: np.ndarray, n_out: int, n_image: int) -> np.ndarray:
    """Readout grid units of a centred core output of ``n_out`` pixels → image grid units."""
    pixel = (mu + 1) / 2 * (n_out - 1) + (n_image - n_out) / 2
    return pixel / (n_image - 1) * 2 - 1


def run(variant: str, loaders: dict, truth: dict, image_hw: tuple[int, int], epochs: int, lr: float) -> None:
    model = stacked_core_full_gauss_readout(loaders, seed=0, **{**BASE_MODEL, **VARIANTS[variant]})
    start = time.perf_counter()
    score, output, _ = standard_trainer(
        model,
        loaders,
        seed=0,
        device="cpu",
        max_iter=epochs,
        lr_init=lr,
        patience=5,
        lr_decay_steps=3,
        progress=False,
    )
    seconds = time.perf_counter() - start
    (key,) = loaders["train"]
    h, w = image_hw
    _, _, out_h, out_w = get_module_output(model.core, (1, 1, h, w))
    params = model.readout[key].neuron_parameters()
    mu_x = readout_to_image_grid(params["mu_x"], out_w, w)
    mu_y = readout_to_image_grid(params["mu_y"], out_h, h)
    test = measures.get_correlations(model, loaders, tier="test")
    oracle = measures.get_oracles(loaders, tier="test")
    print(
        f"{variant:>6}: {output['epochs']} epochs in {seconds:.0f} s (best {output['best_epoch']}), val corr {score:.3f}\n"
        f"        RF position corr x {np.corrcoef(mu_x, truth['rf_x'])[0, 1]:.3f}, y {np.corrcoef(mu_y, truth['rf_y'])[0, 1]:.3f}; "
        f"mean abs error x {np.abs(mu_x - truth['rf_x']).mean() * (w - 1) / 2:.2f} px, "
        f"y {np.abs(mu_y - truth['rf_y']).mean() * (h - 1) / 2:.2f} px\n"
        f"        test corr {test.mean():.3f}, oracle {oracle.mean():.3f}, ratio {test.mean() / oracle.mean():.3f}, "
        f"fraction oracle {measures.fraction_oracle(test, oracle):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=100)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--height", type=int, default=36)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="cortex,free")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_synthetic_dataset(
            Path(tmp) / "static90001-1-1-recovery",
            n_neurons=args.neurons,
            n_train=args.train,
            n_validation=max(200, args.train // 8),
            n_test_images=50,
            n_repeats=10,
            image_shape=(args.height, args.width),
            seed=0,
        )
        truth = load_ground_truth(path)
        loaders = static_loaders([str(path)], batch_size=32, seed=0, use_cache=False)
        print(
            f"synthetic: {args.neurons} neurons, {args.train} train images of {args.height}x{args.width}, "
            f"batch 32, lr {args.lr}, threads {args.threads}"
        )
        for variant in args.variants.split(","):
            run(variant.strip(), loaders, truth, (args.height, args.width), args.epochs, args.lr)


if __name__ == "__main__":
    main()
