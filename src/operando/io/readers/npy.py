"""NumPy ``.npy`` reader: memory-mapped, so only the frames a task asks for are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from operando.errors import TruncatedFileError, UnsupportedFormatError
from operando.io.readers._frames import Frames, FrameSource, Window, check_dtype, lazy_frames

__all__ = ["read_npy"]


def read_npy(path: str | Path, *, frames: int | None = None) -> Frames:
    """Open a 2D or 3D ``.npy`` array lazily as frames (N, Y, X).

    Raises
    ------
    UnsupportedFormatError, TruncatedFileError, UnsupportedDtypeError
    """
    path = Path(path)
    arr = _mmap(path)
    dtype = check_dtype(arr.dtype, path)
    if arr.ndim not in (2, 3):
        raise UnsupportedFormatError(path, f"array has shape {arr.shape}; a 2D frame or 3D stack is needed")
    shape = arr.shape if arr.ndim == 3 else (1, *arr.shape)
    source = FrameSource(path, shape, dtype, _read_frames)
    return Frames(lazy_frames(source, frames=frames), path, {}, source=source)


def _mmap(path: Path) -> np.ndarray:
    try:
        # Object arrays need pickle and cannot be memory-mapped: check_dtype names them.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "mmap length" in str(err) or "larger than" in str(err):
            raise TruncatedFileError(path, f"file is shorter than its .npy header says ({err})") from err
        if "pickle" in str(err).lower() or "python objects" in str(err).lower():
            check_dtype(object, path)
        raise UnsupportedFormatError(path, f"not a readable .npy file ({err})") from err


def _read_frames(path: Path, start: int, stop: int, window: Window) -> np.ndarray:
    arr = np.load(path, mmap_mode="r")
    arr = arr if arr.ndim == 3 else arr[None]
    # Copy out of the map so the block does not keep the file mapped.
    return np.array(arr[(slice(start, stop), *window)])
