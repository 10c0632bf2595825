"""Lazy frame stacks shared by every reader: one dask task reads a few frames.

A reader describes its file by a :class:`FrameSource` (path, shape, dtype and a
module-level function that reads frames ``start:stop``). The source holds no open
file handle, so it pickles to distributed workers and every task opens the file
itself; nothing is read until a chunk is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from operando.config import config
from operando.errors import NonFiniteInputError, UnsupportedDtypeError

__all__ = ["FrameSource", "Frames", "check_dtype", "check_finite", "frames_per_chunk", "lazy_frames"]

# Integer and real float data only: bool masks, complex and object arrays are not images.
_SUPPORTED_KINDS = frozenset("uif")

ReadFn = Callable[[Path, int, int], np.ndarray]


@dataclass(frozen=True)
class Frames:
    """A lazy stack of 2D frames read from one input.

    Attributes
    ----------
    data : dask.array.Array of shape (N, Y, X)
        The frames, frame axis first, chunked by a few frames.
    path : Path
        The input it came from.
    attrs : dict
        Metadata found in the file (JSON-friendly scalars, strings and lists).
    energies_ev : ndarray of shape (E,), optional
        Energies of one scan, when the file carries them (Xradia files).
    pixel_size_um : float, optional
        Pixel size, when the file carries it.
    """

    data: da.Array
    path: Path
    attrs: dict[str, Any] = field(default_factory=dict)
    energies_ev: np.ndarray | None = None
    pixel_size_um: float | None = None


@dataclass(frozen=True)
class FrameSource:
    """Array-like view of a frame stack on disk for :func:`dask.array.from_array`.

    ``read(path, start, stop)`` returns frames ``start:stop`` as an array of shape
    ``(stop - start, *shape[1:])``.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    read: ReadFn

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first = key[0] if key else slice(None)
        if not isinstance(first, slice):
            i = int(first) % self.shape[0]
            return self[(slice(i, i + 1), *key[1:])][0]
        start, stop, step = first.indices(self.shape[0])
        block = self.read(self.path, start, max(start, stop))[::step]
        return block[(slice(None), *key[1:])]


def frames_per_chunk(
    frame_shape: tuple[int, ...], dtype: np.dtype, n_frames: int, target_mib: float | None = None
) -> int:
    """Frames per read task so that a task reads about ``chunks.target_mib`` (at least one frame)."""
    target_mib = config.get("chunks.target_mib") if target_mib is None else target_mib
    frame_bytes = max(1, int(np.prod(frame_shape)) * np.dtype(dtype).itemsize)
    return int(np.clip(target_mib * 2**20 // frame_bytes, 1, max(1, n_frames)))


def lazy_frames(source: FrameSource, *, frames: int | None = None) -> da.Array:
    """Dask array over ``source`` with chunks of ``frames`` whole frames.

    Parameters
    ----------
    source : FrameSource
        Shape (N, ...) description of the file.
    frames : int, optional
        Frames per chunk (default from :func:`frames_per_chunk`).
    """
    k = frames or frames_per_chunk(source.shape[1:], source.dtype, source.shape[0])
    path = Path(source.path)
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    name = f"read-{path.name}-{tokenize(str(path), mtime, source.shape, source.dtype.str, getattr(source.read, '__qualname__', None) or repr(source.read))}"
    return da.from_array(
        source,
        chunks=(k, *source.shape[1:]),
        name=name,
        meta=np.empty((0,) * source.ndim, dtype=source.dtype),
    )


def check_dtype(dtype: np.typing.DTypeLike, where: object) -> np.dtype:
    """Return ``dtype`` if operando can ingest it (integers and real floats).

    Raises
    ------
    UnsupportedDtypeError
        For bool, complex, object, string or datetime data.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in _SUPPORTED_KINDS:
        raise UnsupportedDtypeError(where, f"data type {dtype} ({dtype.kind!r} kind) cannot be ingested")
    return dtype


def check_finite(data: da.Array, where: object) -> da.Array:
    """Pass float ``data`` through a per-block check that raises on NaN or inf.

    The check runs inside whatever computes the array (e.g. the write), so a
    non-finite value aborts it before the output can be marked complete.
    """
    if data.dtype.kind != "f":
        return data
    return data.map_blocks(_raise_if_nonfinite, where=str(where), dtype=data.dtype, meta=data._meta)


def _raise_if_nonfinite(block: np.ndarray, where: str, block_info: dict | None = None) -> np.ndarray:
    bad = ~np.isfinite(block)
    if bad.any():
        first = np.argwhere(bad)[0]
        if block_info is not None:
            first = first + np.array([lo for lo, _ in block_info[0]["array-location"]])
        raise NonFiniteInputError(
            where,
            f"{int(bad.sum())} NaN/inf value(s) in a block, the first at index {tuple(int(i) for i in first)}",
        )
    return block
