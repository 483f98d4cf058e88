"""A consolidated on-disk cache of datasets: one uncompressed .npz file per dataset version.

Reading a Sensorium tree means opening tens of thousands of tiny files; after the first read the
arrays are saved together in one file under the user cache folder, so the next load is one
sequential read. Entries are found by a cheap key (the file listing with sizes and modification
times plus the bytes of the metadata), so any change to the data selects a new entry. Writes go to
a temporary file renamed into place, so a crash never leaves a half-written entry behind.

Cache folder: ``cache_dir=`` argument, else the ``SYSID_CACHE_DIR`` environment variable, else
``platformdirs.user_cache_dir("visual-sysid")`` / ``datasets``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CACHE_FORMAT", "default_cache_dir", "load_entry", "save_entry", "entry_path", "clear_cache"]

#: Bump when the layout of an entry changes, so old entries are ignored.
CACHE_FORMAT = 2


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the dataset cache folder.

    Args:
        cache_dir: an explicit folder; wins over everything else.

    Returns:
        ``cache_dir``, else ``$SYSID_CACHE_DIR``, else the platform's user cache folder for
        "visual-sysid" with a ``datasets`` sub-folder. The folder is not created here.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root, from_environment = cache_root()
    return root if from_environment else root / "datasets"


def cache_root() -> tuple[Path, bool]:
    """``($SYSID_CACHE_DIR, True)``, else (the platform's user cache folder for "visual-sysid", False)."""
    env = os.environ.get("SYSID_CACHE_DIR")
    if env:
        return Path(env).expanduser(), True
    import platformdirs  # imported lazily: only needed when caching is on

    return Path(platformdirs.user_cache_dir("visual-sysid")), False


def entry_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file that holds (or would hold) the cache entry for ``key``."""
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"cache key must be a lowercase hex string, got {key!r}")
    return default_cache_dir(cache_dir) / f"v{CACHE_FORMAT}-{key}.npz"


def load_entry(key: str, cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray] | None:
    """Load the arrays of a cache entry, or return None when there is none (or it is unreadable).

    Args:
        key: the entry's hex key.
        cache_dir: the cache folder (see ``default_cache_dir``).

    Returns:
        A dict of array name -> numpy array (fully read into memory), or None.
    """
    path = entry_path(key, cache_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        # An unreadable entry (disk error, foreign file) is treated as a miss and rewritten later.
        return None


def save_entry(
    key: str, arrays: dict[str, np.ndarray], cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """Atomically write a cache entry (uncompressed .npz); failures to write are not fatal.

    Args:
        key: the entry's hex key.
        arrays: name -> numpy array (no object dtypes).
        cache_dir: the cache folder (see ``default_cache_dir``); created when missing.

    Returns:
        The entry's path, or None when the cache folder is not writable.
    """
    path = entry_path(key, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        # A full disk or a read-only cache must not stop the data from loading.
        Path(tmp).unlink(missing_ok=True)
        return None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every dataset cache entry in the cache folder; returns how many files were removed."""
    folder = default_cache_dir(cache_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for item in folder.glob("v*-*.npz"):
        item.unlink(missing_ok=True)
        removed += 1
    return removed
