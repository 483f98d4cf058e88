"""The neuralpredictors readout tutorial (``notebooks/readouts_tutorial.ipynb``), run as written.

Its cells run in order with only the imports changed (neuralpredictors, sensorium and nnfabrik →
this project) and the data path: the tutorial reads two Sensorium 2022 sessions, so two small .zip
files in the Sensorium format with those sessions' names and shapes (1 x 144 x 256 images, 8372 and
7344 neurons, behaviour and pupil centre, a few dozen trials) are first written to a temporary
folder by the project's synthetic generator. What the tutorial prints goes to stdout, line for line
the notebook's output (``tests/test_tutorial.py`` checks every line); setup messages go to stderr.

    python examples/readouts_tutorial.py            # about half a minute on a 2-core CPU
    python examples/readouts_tutorial.py --data DIR  # the real zips in DIR instead

The tutorial's helper cell (its copies of nnfabrik's ``get_data``, ``get_dims_for_loader_dict`` and
``set_random_seed``) is replaced by the imports below. Everything runs for real, the forward passes
too: the factorized readouts hold 2 x ~300 M parameters (2.3 GB), which is most of the run time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SESSIONS = {
    "static21067-10-18-GrayImageNet-94c6ff995dac583098847cfecd43e7b6": 8372,
    "static22846-10-16-GrayImageNet-94c6ff995dac583098847cfecd43e7b6": 7344,
}


def write_tutorial_data(folder: Path) -> list[str]:
    """Write the tutorial's two sessions as Sensorium-format .zip files into ``folder``; return their paths.

    40 train trials (the tutorial's batch is 32), 4 validation trials and 2 test images x 3 repeats
    of 1 x 144 x 256 images, with behaviour and pupil centre, from ``pipeline.data.synthetic``.
    """
    from pipeline.data.synthetic import make_synthetic_dataset, zip_dataset

    paths = []
    for seed, (name, n_neurons) in enumerate(SESSIONS.items()):
        dataset = make_synthetic_dataset(
            folder / "unzipped" / name,
            n_neurons=n_neurons,
            n_train=40,
            n_validation=4,
            n_test_images=2,
            n_repeats=3,
            image_shape=(144, 256),
            seed=seed,
        )
        paths.append(str(zip_dataset(dataset, folder / f"{name}.zip")))
    return paths


def tutorial(filenames: list[str]) -> None:
    """The notebook's code cells, in order; only the imports differ."""
    # ---- cell 3
    import random  # noqa: F401  (the notebook imports it for its own seeding helper)
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    random_seed = 42

    # ---- cell 6
    in_shapes_dict = {"21067-10-18": torch.Size([64, 144, 256]), "22846-10-16": torch.Size([64, 144, 256])}
    n_neurons_dict = {"21067-10-18": 8372, "22846-10-16": 7344}

    # ---- cells 10-12 (neuralpredictors.layers.readouts.factorized / .multi_readout)
    from pipeline.models.readouts.factorized import FullFactorized2d
    from pipeline.models.readouts.multi import MultiReadoutBase

    factorized_readout = MultiReadoutBase(
        in_shape_dict=in_shapes_dict,
        n_neurons_dict=n_neurons_dict,
        base_readout=FullFactorized2d,
        bias=True,
    )
    print(repr(factorized_readout["21067-10-18"]))  # the notebook displays the cell's value

    # ---- cells 15-17 (neuralpredictors.layers.readouts.gaussian)
    from pipeline.models.readouts.gaussian import Gaussian2d

    gaussian_readout = MultiReadoutBase(
        in_shape_dict=in_shapes_dict,
        n_neurons_dict=n_neurons_dict,
        base_readout=Gaussian2d,
        bias=True,
    )
    print(repr(gaussian_readout["21067-10-18"]))

    # ---- cell 22: the notebook's copies of nnfabrik's helpers, imported instead
    from pipeline.builder import get_data  # noqa: I001  (nnfabrik.builder.get_data; cells kept apart)
    from pipeline.utils import get_dims_for_loader_dict, set_random_seed  # nnfabrik.utility.nn_helpers

    # ---- cell 23 (sensorium.datasets)
    from pipeline.data import static_loaders

    dataset_config = {
        "paths": filenames,
        "normalize": True,
        "include_behavior": False,
        "include_eye_position": True,
        "batch_size": 32,
        "scale": 1,
        "cuda": True if device == "cuda" else False,
    }

    dataloaders = get_data(dataset_fn=static_loaders, dataset_config=dataset_config)

    # ---- cell 24
    model_config = {
        # core args
        "input_kern": 9,
        "hidden_kern": 7,
        "hidden_channels": 64,
        "layers": 4,
        "depth_separable": True,
        "stack": -1,
        "gamma_input": 6.3831,
    }

    # ---- cell 26 (neuralpredictors.layers.cores)
    from pipeline.models.cores import Stacked2dCore

    train_dataloaders = dataloaders["train"]

    example_batch = next(iter(list(train_dataloaders.values())[0]))
    in_name, out_name = (
        list(example_batch.keys())[:2] if isinstance(example_batch, dict) else example_batch._fields[:2]
    )

    session_shape_dict = get_dims_for_loader_dict(train_dataloaders)
    input_channels = [v[in_name][1] for v in session_shape_dict.values()]

    core_input_channels = (
        list(input_channels.values())[0] if isinstance(input_channels, dict) else input_channels[0]
    )

    set_random_seed(random_seed)

    core = Stacked2dCore(
        input_channels=core_input_channels,
        **model_config,
    )

    # ---- cell 28
    print(f"Sample batch shape: {example_batch.images.shape} (batch size, in_channels, in_height, in_width)")

    with torch.no_grad():
        core_output = core(example_batch.images)

    print(f"Core output shape: {core_output.shape} (batch_size, out_channels, out_height, out_width)")

    # ---- cell 30
    with torch.no_grad():
        readout_output_sample = factorized_readout(core_output, data_key="21067-10-18")

    print(f"Readout output shape: {readout_output_sample.shape} (batch_size, n_neurons)")

    # ---- cell 32
    with torch.no_grad():
        readout_output_sample = gaussian_readout(core_output, data_key="21067-10-18")

    print(f"Readout output shape: {readout_output_sample.shape} (batch_size, n_neurons)")

    # ---- cell 37
    print(f"Core parameters count: {sum(p.numel() for p in core.parameters()) / 1e6:.3f}M")

    # ---- cell 39
    n_params_naive = (np.prod(list(in_shapes_dict["21067-10-18"])) + 1) * n_neurons_dict["21067-10-18"]

    print(f"Naive readout parameters count: {n_params_naive / 1e9:.3f}B")
    print(f"Parameters per neuron: {n_params_naive // n_neurons_dict['21067-10-18'] / 1e6:.3f}M")

    # ---- cell 41
    parameters_count = sum(p.numel() for p in factorized_readout["21067-10-18"].parameters())

    print(f"Total parameters in factorised readout for session 21067-10-18: {parameters_count / 1e6:.3f}M")
    print(f"Parameters per neuron: {parameters_count // n_neurons_dict['21067-10-18']}")

    # ---- cell 43
    parameters_count = sum(p.numel() for p in gaussian_readout["21067-10-18"].parameters())

    print(f"Total parameters in Gaussian readout for session 21067-10-18: {parameters_count / 1e6:.3f}M")
    print(f"Parameters per neuron: {parameters_count // n_neurons_dict['21067-10-18']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with the two real Sensorium 2022 zips (default: write synthetic ones)",
    )
    args = parser.parse_args(argv)
    if args.data is not None:
        filenames = [str(args.data / f"{name}.zip") for name in SESSIONS]
        missing = [f for f in filenames if not Path(f).exists()]
        if missing:
            parser.error(f"not found: {', '.join(missing)}")
        tutorial(filenames)
        return
    with tempfile.TemporaryDirectory(prefix="readouts-tutorial-") as tmp:
        folder = Path(tmp)
        # the loaders' consolidated cache goes to the temporary folder, not the user's cache
        os.environ["SYSID_CACHE_DIR"] = str(folder / "cache")
        started = time.perf_counter()
        filenames = write_tutorial_data(folder)
        print(f"wrote {len(filenames)} sessions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        tutorial(filenames)


if __name__ == "__main__":
    main()
