"""Import neuralpredictors 0.3.0 (the peer library) for parity tests and benchmarks.

The peer does not import on Python >= 3.10 as released: it imports ``collections.Iterable`` /
``collections.Mapping`` and imports torchvision and scikit-image without declaring them. We patch
those in here, inside the test/benchmark process only; our own code never imports the peer.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import sys
import types


def _stub_module(name: str, **attrs) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except Exception:  # torchvision is present but broken beside the CPU torch wheel, or absent
        sys.modules.pop(name, None)
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module


def _rescale_unavailable(*args, **kwargs):
    raise RuntimeError("skimage.transform.rescale is stubbed in the peer shim; use scale=1 with the peer")


def import_neuralpredictors():
    """Return the ``neuralpredictors`` package, or raise ImportError when it is not installed."""
    for name in ("Iterable", "Mapping", "MutableMapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    _stub_module("torchvision", models=types.SimpleNamespace())
    _stub_module("skimage")
    _stub_module("skimage.transform", rescale=_rescale_unavailable)
    import neuralpredictors  # noqa: F401  (raises ImportError when absent)
    import neuralpredictors.layers.cores
    import neuralpredictors.layers.encoders
    import neuralpredictors.layers.readouts
    import neuralpredictors.layers.shifters
    import neuralpredictors.measures
    import neuralpredictors.training

    return neuralpredictors


def peer_sota_model(data_key: str, n_neurons: int, coordinates, image_hw: tuple[int, int] = (36, 64)):
    """The peer's Sensorium 2022 SOTA model as sensorium's builder makes it (neuralpredictors 0.3.0).

    One session ``data_key`` of ``n_neurons`` neurons with cortex ``coordinates`` ((N, >= 2) array)
    and 1-channel images of height x width ``image_hw``; raises ImportError without the peer.
    """
    import_neuralpredictors()
    from neuralpredictors.layers import cores, encoders, readouts

    class PeerMultipleFullGaussian2d(readouts.MultiReadoutSharedParametersBase):
        _base_readout = readouts.FullGaussian2d

    core = cores.Stacked2dCore(
        input_channels=1,
        hidden_channels=64,
        input_kern=9,
        hidden_kern=7,
        layers=4,
        gamma_input=6.3831,
        skip=0,
        final_nonlinearity=True,
        bias=False,
        momentum=0.9,
        pad_input=False,
        batch_norm=True,
        hidden_dilation=1,
        laplace_padding=None,
        input_regularizer="LaplaceL2norm",
        stack=-1,
        depth_separable=True,
        linear=False,
        attention_conv=False,
        hidden_padding=None,
        use_avg_reg=False,
    )
    h, w = image_hw
    readout = PeerMultipleFullGaussian2d(
        in_shape_dict={data_key: (64, h - 8, w - 8)},  # the unpadded 9 x 9 input conv crops 4 px per side
        n_neurons_dict={data_key: n_neurons},
        init_mu_range=0.3,
        bias=True,
        init_sigma=0.1,
        gamma_readout=0.0076,
        gauss_type="full",
        grid_mean_predictor={"hidden_layers": 1, "hidden_features": 30, "final_tanh": True},
        grid_mean_predictor_type="cortex",
        source_grids={data_key: coordinates[:, :2]},
    )
    return encoders.FiringRateEncoder(core=core, readout=readout, elu_offset=0)
