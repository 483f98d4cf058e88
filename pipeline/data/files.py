"""Read-only access to a Sensorium file tree stored as a folder or as a .zip archive.

The two storage forms are hidden behind one small interface (``FileTreeSource``) so the dataset code
never cares where the bytes come from. Nothing is ever written into the dataset location.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["FileTreeSource", "FolderSource", "ZipSource", "open_source", "read_npy_bytes", "stack_npy_files"]


class FileTreeSource:
    """Abstract read-only view of a dataset tree; paths are POSIX strings relative to its root."""

    #: Where the data lives (the folder or the .zip file).
    location: Path

    def exists(self, rel: str) -> bool:
        """True when the file ``rel`` exists."""
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        """True when ``rel`` is a directory (a name prefix in a zip)."""
        raise NotImplementedError

    def list_dir(self, rel: str) -> list[str]:
        """Names (not paths) of the direct children of directory ``rel``."""
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of file ``rel``."""
        raise NotImplementedError

    def read_many(self, rels: list[str]) -> list[bytes]:
        """Raw bytes of many files, in the given order."""
        return [self.read_bytes(r) for r in rels]

    def signature(self) -> str:
        """A cheap hex key that changes when any file is added, removed, resized or touched."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open handles."""


class FolderSource(FileTreeSource):
    """A dataset stored as a plain folder; many small files are read with a thread pool."""

    def __init__(self, root: Path, num_workers: int | None = None):
        self.location = root
        self.root = root
        # Reading many tiny files is dominated by syscalls that release the GIL, so threads help.
        self.num_workers = num_workers if num_workers is not None else min(8, (os.cpu_count() or 1) * 2)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def list_dir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self.root / rel))

    def read_bytes(self, rel: str) -> bytes:
        with open(self.root / rel, "rb") as handle:
            return handle.read()

    def read_many(self, rels: list[str]) -> list[bytes]:
        if self.num_workers <= 1 or len(rels) < 64:
            return [self.read_bytes(r) for r in rels]
        with ThreadPoolExecutor(self.num_workers) as pool:
            return list(pool.map(self.read_bytes, rels, chunksize=256))

    def _walk(self) -> Iterator[tuple[str, int, int]]:
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self.root / rel) as entries:
                for entry in entries:
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(child)
                    else:
                        st = entry.stat(follow_symlinks=True)
                        yield child, st.st_size, st.st_mtime_ns

    def signature(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(self.root.resolve()).encode())
        for rel, size, mtime in sorted(self._walk()):
            digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()


class ZipSource(FileTreeSource):
    """A dataset stored as a .zip of the folder (read in place, never extracted)."""

    def __init__(self, zip_path: Path):
        self.location = zip_path
        try:
            self._zip = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{zip_path} is not a readable zip archive: {err}") from err
        names = [n for n in self._zip.namelist() if not n.endswith("/")]
        # The archive may hold the tree at its top level or inside one folder (the usual case).
        marker = "meta/trials/tiers.npy"
        hits = [n[: -len(marker)] for n in names if n == marker or n.endswith("/" + marker)]
        if not hits:
            self._zip.close()
            raise ValueError(f"{zip_path} holds no Sensorium dataset: no '{marker}' inside the archive")
        self.prefix = min(hits, key=len)
        self._files = {n[len(self.prefix) :]: n for n in names if n.startswith(self.prefix)}
        self._dirs: dict[str, set[str]] = {}
        for rel in self._files:
            parts = PurePosixPath(rel).parts
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                self._dirs.setdefault(parent, set()).add(parts[depth])

    def exists(self, rel: str) -> bool:
        return rel in self._files

    def is_dir(self, rel: str) -> bool:
        return rel.rstrip("/") in self._dirs

    def list_dir(self, rel: str) -> list[str]:
        return sorted(self._dirs.get(rel.rstrip("/"), ()))

    def read_bytes(self, rel: str) -> bytes:
        return self._zip.read(self._files[rel])

    def signature(self) -> str:
        st = self.location.stat()
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.location.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.prefix}".encode())
        for info in sorted(self._zip.infolist(), key=lambda i: i.filename):
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        return digest.hexdigest()

    def close(self) -> None:
        self._zip.close()


def open_source(path: str | os.PathLike, num_workers: int | None = None) -> FileTreeSource:
    """Open a dataset folder or .zip read-only.

    Args:
        path: the dataset folder (holding ``data/`` and ``meta/``) or a .zip of it.
        num_workers: threads for reading a folder's many small files (default: a few per core).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is neither a folder nor a zip archive.
    """
    location = Path(path).expanduser()
    if not location.exists():
        raise FileNotFoundError(f"dataset path does not exist: {location}")
    if location.is_dir():
        return FolderSource(location, num_workers=num_workers)
    if zipfile.is_zipfile(location):
        return ZipSource(location)
    raise ValueError(f"dataset path {location} is neither a folder nor a .zip archive")


def read_npy_bytes(raw: bytes, name: str) -> np.ndarray:
    """Parse one .npy file's bytes (no pickles allowed); ``name`` is used in error messages."""
    if not raw.startswith(b"\x93NUMPY"):
        # numpy would try to unpickle it and suggest allow_pickle=True, which is never the fix
        raise ValueError(
            f"cannot read {name}: it is not a .npy file (no .npy header; {len(raw)} bytes): "
            "the file is damaged or not part of a Sensorium dataset"
        )
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read {name} as a .npy array: {err}") from err


def _npy_header(raw: bytes, name: str) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """Return (header length, shape, dtype, fortran_order) of a .npy byte string."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception as err:
        raise ValueError(f"cannot read {name} as a .npy array: {err}") from err
    return stream.tell(), tuple(shape), np.dtype(dtype), fortran


def stack_npy_files(raws: list[bytes], names: list[str], field: str) -> np.ndarray:
    """Stack per-trial .npy byte strings into one contiguous array of shape (n, *item_shape).

    All files of one field normally share one header, so the payloads are copied straight into the
    output buffer; any file with a different header is parsed on its own and must have the same shape.

    Args:
        raws: the files' bytes, one per trial, in trial order.
        names: the files' paths (for error messages).
        field: the data field (``images``, ``responses``, ...), for error messages.

    Raises:
        ValueError: a file is unreadable or its shape differs from the first trial's.
    """
    if not raws:
        raise ValueError(f"data/{field} holds no trial files")
    hlen, shape, dtype, fortran = _npy_header(raws[0], names[0])
    if dtype.hasobject:
        raise ValueError(f"{names[0]} holds Python objects; expected a numeric array")
    header = raws[0][:hlen]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    out = np.empty((len(raws), *shape), dtype=dtype)
    flat = out.reshape(len(raws), -1)
    for i, raw in enumerate(raws):
        if raw[:hlen] == header and len(raw) == hlen + nbytes and not fortran:
            flat[i] = np.frombuffer(raw, dtype=dtype, count=flat.shape[1], offset=hlen)
            continue
        arr = read_npy_bytes(raw, names[i])
        if arr.shape != shape:
            raise ValueError(
                f"{names[i]} has shape {arr.shape} but trial 0 of data/{field} has shape {shape}; "
                f"every trial of a field must have the same shape"
            )
        out[i] = arr
    return out


def _is_byte_valued(arr: np.ndarray) -> bool:
    """True when every value is an integer in 0..255 (so uint8 holds it exactly)."""
    if arr.dtype == np.uint8:
        return True
    if not np.issubdtype(arr.dtype, np.number) or arr.size == 0:
        return arr.size == 0
    return bool(arr.min() >= 0 and arr.max() <= 255 and np.array_equal(arr, np.round(arr)))


def read_trials(
    source: FileTreeSource,
    names: list[str],
    field: str,
    as_images: bool,
    chunk: int = 1024,
    float_dtype: type = np.float32,
) -> np.ndarray:
    """Read per-trial .npy files into one contiguous array, a chunk of files at a time.

    Reading in chunks keeps peak memory near the size of the output (the raw bytes of only one chunk
    are held at once). Images are stored as uint8 as long as every value seen is an integer in
    0..255 and switch to float32 otherwise; every other field becomes ``float_dtype``.

    Args:
        source: the dataset tree.
        names: the trial files in trial order.
        field: the field name, for error messages.
        as_images: apply the uint8-when-possible rule (for ``images``).
        chunk: files per chunk.
        float_dtype: the dtype of non-image fields (float32; float64 keeps small fields exact).

    Returns:
        Array (n, *item_shape), uint8, float32 or ``float_dtype``.
    """
    out = None
    item_shape = None
    for start in range(0, len(names), chunk):
        part_names = names[start : start + chunk]
        part = stack_npy_files(source.read_many(part_names), part_names, field)
        if out is None:
            item_shape = part.shape[1:]
            dtype = (np.uint8 if _is_byte_valued(part) else np.float32) if as_images else float_dtype
            out = np.empty((len(names), *item_shape), dtype=dtype)
        elif part.shape[1:] != item_shape:
            raise ValueError(
                f"{part_names[0]} has shape {part.shape[1:]} but {names[0]} has shape {item_shape}; "
                f"every trial of data/{field} must have the same shape"
            )
        if out.dtype == np.uint8 and not _is_byte_valued(part):
            out = out.astype(np.float32)  # earlier chunks were exact integers, so nothing is lost
        out[start : start + len(part)] = part
    if out is None:
        raise ValueError(f"data/{field} holds no trial files")
    return out
