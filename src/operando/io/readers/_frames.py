"""Lazy frame stacks shared by every reader: one dask task reads a few frames.

A reader describes its file by a :class:`FrameSource` (path, shape, dtype and a
module-level function that reads frames ``start:stop`` cropped to a ``(y, x)``
window). A task reads only its own window, frame by frame, so a chunk of the output
costs one chunk of memory, never a whole slab of frames. The source holds no open
file handle, so it pickles to distributed workers and every task opens the file
itself; nothing is read until a chunk is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
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

Window = tuple[slice, slice]
ReadFn = Callable[[Path, int, int, Window], np.ndarray]


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
    source: FrameSource | None = None

    def with_chunks(self, chunks: tuple[int, int, int]) -> Frames:
        """The same frames with dask chunks ``chunks``, each task reading only its window."""
        if self.source is None:
            data = self.data.rechunk(chunks)
        else:
            data = lazy_frames(self.source, chunks=chunks)
        return replace(self, data=data)


@dataclass(frozen=True)
class FrameSource:
    """Array-like view of a frame stack on disk for :func:`dask.array.from_array`.

    ``read(path, start, stop, window)`` returns frames ``start:stop`` cropped to
    ``window`` (a ``(y, x)`` pair of slices with steps of 1).
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
        window, rest = _window(key[1:], self.shape[1:])
        block = self.read(self.path, start, max(start, stop), window)[::step]
        return block[(slice(None), *rest)]


def _window(key: tuple[Any, ...], frame_shape: tuple[int, ...]) -> tuple[Window, tuple[Any, ...]]:
    """Split a frame key into contiguous slices to read and what to apply after."""
    key = key + (slice(None),) * (len(frame_shape) - len(key))
    if all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        return tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, frame_shape, strict=True)), ()
    return (slice(None), slice(None)), key


def frames_per_chunk(
    frame_shape: tuple[int, ...], dtype: np.dtype, n_frames: int, target_mib: float | None = None
) -> int:
    """Frames per read task so that a task reads about ``chunks.target_mib`` (at least one frame)."""
    target_mib = config.get("chunks.target_mib") if target_mib is None else target_mib
    frame_bytes = max(1, int(np.prod(frame_shape)) * np.dtype(dtype).itemsize)
    return int(np.clip(target_mib * 2**20 // frame_bytes, 1, max(1, n_frames)))


def lazy_frames(
    source: FrameSource, *, frames: int | None = None, chunks: tuple[int, ...] | None = None
) -> da.Array:
    """Dask array over ``source``, chunked by ``chunks`` or by ``frames`` whole frames.

    Parameters
    ----------
    source : FrameSource
        Shape (N, Y, X) description of the file.
    frames : int, optional
        Whole frames per chunk (default from :func:`frames_per_chunk`).
    chunks : tuple of int, optional
        Full chunk shape ``(frames, y, x)``; overrides ``frames``.
    """
    k = frames or frames_per_chunk(source.shape[1:], source.dtype, source.shape[0])
    chunks = chunks or (k, *source.shape[1:])
    path = Path(source.path)
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    name = f"read-{path.name}-{tokenize(str(path), mtime, source.shape, source.dtype.str, getattr(source.read, '__qualname__', None) or repr(source.read))}"
    return da.from_array(
        source,
        chunks=chunks,
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
