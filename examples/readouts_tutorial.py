"""Readouts tutorial: a shared core, per-session readouts and how many parameters each readout needs.

Mirrors the neuralpredictors readout tutorial with random tensors (no data needed). Run with

    python examples/readouts_tutorial.py

Two Sensorium 2022 sessions with core output 64 x 144 x 256 (channels x height x width) and 8372 /
7344 neurons are used. Parameter counts are exact; the large factorized readout is built on
PyTorch's "meta" device (shapes only, no memory) because two sessions of it would take 2.3 GB.
Forward passes run on a small random core output so the script finishes in seconds on one CPU.
"""

from __future__ import annotations

import torch

from pipeline.models.cores import Stacked2dCore
from pipeline.models.readouts import (
    FullFactorized2d,
    FullGaussian2d,
    Gaussian2d,
    MultiReadoutBase,
    PointPooled2d,
)

IN_SHAPE_DICT = {"21067-10-18": (64, 144, 256), "22846-10-16": (64, 144, 256)}
N_NEURONS_DICT = {"21067-10-18": 8372, "22846-10-16": 7344}
SESSION = "21067-10-18"


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module`` (shared Parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def millions(n: int) -> str:
    """Format a count in millions with three decimals, e.g. 40256 -> '0.040M'."""
    return f"{n / 1e6:.3f}M"


def core_section() -> Stacked2dCore:
    """Build the Sensorium 2022 core and show its size and output shape."""
    core = Stacked2dCore(
        input_channels=1,
        input_kern=9,
        hidden_kern=7,
        hidden_channels=64,
        layers=4,
        depth_separable=True,
        stack=-1,
        gamma_input=6.3831,
    )
    print("== Core ==")
    print(f"Stacked2dCore parameters: {millions(count_parameters(core))}")
    # a batch of 32 full-resolution images would need ~2 GB of activations on the CPU: the shape
    # is computed analytically, and checked against a real forward pass on 2 images
    print(f"core output for images (32, 1, 144, 256): {core.output_shape((32, 1, 144, 256))}")
    core.eval()
    with torch.inference_mode():
        small = core(torch.randn(2, 1, 144, 256))
    assert tuple(small.shape) == core.output_shape((2, 1, 144, 256))
    print(f"checked with a forward pass of 2 images: {tuple(small.shape)}")
    return core


def readout_sizes_section() -> None:
    """Parameter counts of the readouts for session 21067-10-18 (8372 neurons)."""
    n_neurons = N_NEURONS_DICT[SESSION]
    channels, height, width = IN_SHAPE_DICT[SESSION]

    print("\n== Factorized readout ==")
    with torch.device("meta"):  # shapes only: 309 M parameters per session are not allocated
        factorized = MultiReadoutBase(IN_SHAPE_DICT, N_NEURONS_DICT, base_readout=FullFactorized2d, bias=True)
    n = count_parameters(factorized[SESSION])
    print(factorized[SESSION])
    print(f"parameters: {millions(n)}, per neuron: {n // n_neurons}")

    print("\n== Gaussian readout ==")
    gaussian = MultiReadoutBase(IN_SHAPE_DICT, N_NEURONS_DICT, base_readout=Gaussian2d, bias=True)
    n = count_parameters(gaussian[SESSION])
    print(gaussian[SESSION])
    print(f"parameters: {millions(n)}, per neuron: {n // n_neurons}")

    print("\n== FullGaussian2d covariance types ==")
    for gauss_type in ("full", "uncorrelated", "isotropic"):
        readout = FullGaussian2d(IN_SHAPE_DICT[SESSION], n_neurons, bias=True, gauss_type=gauss_type)
        n = count_parameters(readout)
        print(f"{readout}: {n} parameters ({millions(n)}), per neuron: {n // n_neurons}")

    print("\n== Naive fully connected readout (counted, never built) ==")
    naive = (channels * height * width + 1) * n_neurons
    print(f"parameters: {naive / 1e9:.3f}B, per neuron: {millions(naive // n_neurons)}")


def forward_section() -> None:
    """Run every readout on a small random core output and show the prediction shapes."""
    print("\n== Forward passes on a small random core output (batch 4, 64 x 18 x 32) ==")
    in_shape = (64, 18, 32)
    n_neurons = 100
    x = torch.randn(4, *in_shape)
    readouts = {
        "FullFactorized2d": FullFactorized2d(in_shape, n_neurons, bias=True),
        "Gaussian2d": Gaussian2d(in_shape, n_neurons, bias=True),
        "FullGaussian2d": FullGaussian2d(in_shape, n_neurons, bias=True),
        "PointPooled2d": PointPooled2d(
            in_shape, n_neurons, pool_steps=2, bias=True, pool_kern=2, init_range=0.2
        ),
    }
    for name, readout in readouts.items():
        readout.eval()  # Gaussian readouts use the mean positions in eval mode: deterministic
        with torch.no_grad():
            y = readout(x)
            shifted = readout(x, shift=torch.full((4, 2), 0.1))
            subset = readout(x, out_idx=[0, 5, 7])
        print(
            f"{name}: output {tuple(y.shape)}, out_idx=[0, 5, 7] -> {tuple(subset.shape)}, "
            f"shift changes the output: {not torch.allclose(y, shifted)}"
        )

    multi = MultiReadoutBase(
        {"session-a": in_shape, "session-b": in_shape},
        {"session-a": 30, "session-b": 20},
        base_readout=FullGaussian2d,
        bias=True,
    )
    with torch.no_grad():
        for key in multi:
            print(f"multi-readout, data_key={key!r}: output {tuple(multi(x, data_key=key).shape)}")


def main() -> None:
    torch.manual_seed(0)
    core_section()
    readout_sizes_section()
    forward_section()


if __name__ == "__main__":
    main()
