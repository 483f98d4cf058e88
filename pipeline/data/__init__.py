"""Sensorium-format datasets held in memory, fast tensor loaders, and a ground-truth synthetic generator.

Typical use::

    from pipeline.data import static_loaders
    loaders = static_loaders(["path/to/static20457-5-9-preproc0"], batch_size=128, seed=0)
    for images, responses in loaders["train"]["20457-5-9-0"]:
        ...
"""

from .datasets import ArrayNamespace, StaticDataset, get_data_key
from .loaders import TensorLoader, TierView, static_loader, static_loaders

__all__ = [
    "ArrayNamespace",
    "StaticDataset",
    "TensorLoader",
    "TierView",
    "get_data_key",
    "load_ground_truth",
    "make_synthetic_dataset",
    "static_loader",
    "static_loaders",
]


def __getattr__(name: str):
    # The generator is imported on first use, so ``python -m pipeline.data.synthetic`` runs it cleanly.
    if name in ("make_synthetic_dataset", "load_ground_truth"):
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")
