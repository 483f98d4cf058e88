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
