"""Import sensorium (the Sensorium 2022 starter kit, the peer) for differential tests.

sensorium's source lies in ``shared/peers/sensorium`` beside the repository (or beside any folder
above it, so worktrees find it too); tests that use it skip when it is absent. It does not import
on Python 3.11 / torch 2.13 as published, so this module, in the test process only:

* applies the neuralpredictors shims of :mod:`tests.peer` (``collections`` aliases, an empty
  ``torchvision``; scikit-image is used for real when installed, as sensorium's ``scale`` needs it);
* provides the two nnfabrik modules it imports, written from nnfabrik's documented behaviour
  (``nnfabrik.utility.nn_helpers.set_random_seed`` / ``get_dims_for_loader_dict`` /
  ``get_io_dims``, ``nnfabrik.builder.get_data``) — deliberately independent of this project's
  versions, so a bug in ours cannot leak into the reference;
* :func:`scheduler_without_verbose` drops the ``verbose=`` argument that sensorium's trainer passes
  to ``ReduceLROnPlateau`` (removed from torch), only while the peer's trainer runs.

The peer writes ``config.json`` into every dataset folder it opens: :func:`peer_copy` copies a
dataset to a temporary folder first (:func:`peer_shadow` links a large one's folders instead). Our
own code never imports any of this.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.peer import import_neuralpredictors

REPO_ROOT = Path(__file__).resolve().parents[1]


def peers_dir() -> Path | None:
    """``shared/peers`` beside the repository or beside one of the folders above it, or None."""
    for folder in REPO_ROOT.parents:
        candidate = folder / "shared" / "peers"
        if (candidate / "sensorium" / "sensorium" / "__init__.py").is_file():
            return candidate
    return None


def _nn_helpers_module() -> types.ModuleType:
    """nnfabrik.utility.nn_helpers as sensorium uses it (seeding and first-batch shapes)."""

    def get_io_dims(data_loader):
        items = next(iter(data_loader))
        if hasattr(items, "_asdict"):
            items = items._asdict()
        if hasattr(items, "items"):
            return {k: v.shape for k, v in items.items()}
        return (v.shape for v in items)

    def get_dims_for_loader_dict(dataloaders):
        return {k: get_io_dims(v) for k, v in dataloaders.items()}

    def set_random_seed(seed, deterministic=True):
        random.seed(seed)
        np.random.seed(seed)
        if deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        torch.manual_seed(seed)

    module = types.ModuleType("nnfabrik.utility.nn_helpers")
    module.get_io_dims = get_io_dims
    module.get_dims_for_loader_dict = get_dims_for_loader_dict
    module.set_random_seed = set_random_seed
    return module


def _builder_module() -> types.ModuleType:
    def get_data(dataset_fn, dataset_config):
        return dataset_fn(**dataset_config)

    module = types.ModuleType("nnfabrik.builder")
    module.get_data = get_data
    return module


def _install_nnfabrik_stubs() -> None:
    try:
        importlib.import_module("nnfabrik.utility.nn_helpers")
        importlib.import_module("nnfabrik.builder")
        return  # the real nnfabrik is installed
    except Exception:
        pass
    for name in ("nnfabrik", "nnfabrik.utility"):
        sys.modules.setdefault(name, types.ModuleType(name))
    helpers, builder = _nn_helpers_module(), _builder_module()
    sys.modules["nnfabrik.utility.nn_helpers"] = helpers
    sys.modules["nnfabrik.builder"] = builder
    sys.modules["nnfabrik"].utility = sys.modules["nnfabrik.utility"]
    sys.modules["nnfabrik"].builder = builder
    sys.modules["nnfabrik.utility"].nn_helpers = helpers


def load_sensorium() -> types.ModuleType:
    """Return the ``sensorium`` package with the shims above; ImportError (with the reason) when absent.

    For benchmarks; tests use :func:`import_sensorium`, which skips instead.
    """
    peers = peers_dir()
    if peers is None:
        raise ImportError("sensorium (shared/peers/sensorium) is not available")
    import_neuralpredictors()  # ImportError when neuralpredictors (the dev extra) is not installed
    _install_nnfabrik_stubs()
    root = str(peers / "sensorium")
    if root not in sys.path:
        sys.path.insert(0, root)
    import sensorium
    import sensorium.datasets
    import sensorium.models
    import sensorium.training
    import sensorium.utility.scores

    return sensorium


def import_sensorium() -> types.ModuleType:
    """Return the ``sensorium`` package, or skip the calling test when the peer is not available."""
    try:
        return load_sensorium()
    except ImportError as error:
        pytest.skip(str(error))


def require_skimage() -> None:
    """Skip unless scikit-image is installed for real (sensorium rescales images with it)."""
    try:
        from skimage.transform import rescale
    except ImportError:
        pytest.skip("scikit-image is not installed (sensorium's scale option needs it)")
    if getattr(rescale, "__module__", "").startswith("tests."):
        pytest.skip("scikit-image is stubbed in this process")


def peer_copy(dataset: Path, destination: Path) -> str:
    """Copy a dataset folder into ``destination`` (the peer writes config.json into what it reads)."""
    target = destination / Path(dataset).name
    if not target.exists():
        shutil.copytree(dataset, target)
    return str(target)


def peer_shadow(dataset: Path, destination: Path) -> str:
    """A folder in ``destination`` whose entries link to a large dataset's, with its own config.json.

    For datasets too large to copy (the real data): the peer then writes nothing into the original.
    """
    target = destination / Path(dataset).name
    target.mkdir(parents=True, exist_ok=True)
    for entry in Path(dataset).iterdir():
        if entry.name == "config.json":
            shutil.copy(entry, target / entry.name)
        elif not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return str(target)


@contextlib.contextmanager
def scheduler_without_verbose() -> Iterator[None]:
    """While active, ``torch.optim.lr_scheduler.ReduceLROnPlateau`` ignores a ``verbose=`` argument."""
    original = torch.optim.lr_scheduler.ReduceLROnPlateau

    class ReduceLROnPlateau(original):
        def __init__(self, *args, verbose=None, **kwargs):
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau
    try:
        yield
    finally:
        torch.optim.lr_scheduler.ReduceLROnPlateau = original
