"""HDF5 reader: a named dataset (e.g. ``/exchange/data``) as lazy frames.

Each dask task opens the file itself (h5py handles do not pickle), so the array
works with distributed schedulers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from operando.errors import InputNotFoundError, TruncatedFileError, UnsupportedFormatError
from operando.io.readers._frames import Frames, FrameSource, Window, check_dtype, lazy_frames

__all__ = ["DEFAULT_DATASET", "HDF5_SUFFIXES", "read_hdf5"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
DEFAULT_DATASET = "/exchange/data"  # Data Exchange, as written at tomography beamlines


def read_hdf5(path: str | Path, dataset_path: str | None = None, *, frames: int | None = None) -> Frames:
    """Open dataset ``dataset_path`` of an HDF5 file lazily as frames (N, Y, X).

    Parameters
    ----------
    path : str or Path
        The HDF5 file.
    dataset_path : str, optional
        Dataset inside the file; default ``/exchange/data``, or the file's only
        2D/3D dataset.
    frames : int, optional, keyword-only
        Frames per dask chunk.

    Raises
    ------
    InputNotFoundError
        If the dataset is not in the file.
    UnsupportedFormatError, TruncatedFileError, UnsupportedDtypeError
    """
    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        if "truncated" in str(err).lower():
            raise TruncatedFileError(path, f"HDF5 file is shorter than its header says ({err})") from err
        raise UnsupportedFormatError(path, f"not a readable HDF5 file ({err})") from err
    with fh:
        name = dataset_path or _default_dataset(fh, path)
        dset = fh.get(name)
        if not isinstance(dset, h5py.Dataset):
            raise InputNotFoundError(
                path,
                f"no dataset {name!r} in the file (datasets: {', '.join(_datasets(fh)) or 'none'})",
                remedy="Pass the dataset path, e.g. --dataset-path /exchange/data.",
            )
        if dset.ndim not in (2, 3):
            raise UnsupportedFormatError(
                path, f"dataset {name!r} has shape {dset.shape}; a 2D frame or 3D stack is needed"
            )
        shape = dset.shape if dset.ndim == 3 else (1, *dset.shape)
        dtype = check_dtype(dset.dtype, f"{path}:{name}")
        attrs = {"hdf5:dataset": dset.name, **_attrs(fh.attrs, "hdf5:"), **_attrs(dset.attrs, "hdf5:data:")}
    source = FrameSource(path, shape, dtype, _Reader(name))
    return Frames(lazy_frames(source, frames=frames), path, attrs, source=source)


class _Reader:
    """Picklable ``read(path, start, stop, window)`` for one dataset."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"hdf5-dataset:{self.name}"

    def __call__(self, path: Path, start: int, stop: int, window: Window) -> np.ndarray:
        with h5py.File(path, "r") as fh:
            dset = fh[self.name]
            # h5py reads only the hyperslab.
            return dset[(slice(start, stop), *window)] if dset.ndim == 3 else dset[window][None][start:stop]


def _datasets(fh: h5py.File) -> list[str]:
    names: list[str] = []
    fh.visititems(lambda n, obj: names.append(f"/{n}") if isinstance(obj, h5py.Dataset) else None)
    return names


def _default_dataset(fh: h5py.File, path: Path) -> str:
    if DEFAULT_DATASET in fh:
        return DEFAULT_DATASET
    images = [n for n in _datasets(fh) if fh[n].ndim in (2, 3)]
    if len(images) == 1:
        return images[0]
    raise InputNotFoundError(
        path,
        f"no {DEFAULT_DATASET} and {len(images)} candidate image datasets ({', '.join(images) or 'none'})",
        remedy="Pass the dataset path, e.g. --dataset-path /exchange/data.",
    )


def _attrs(attrs: h5py.AttributeManager, prefix: str) -> dict[str, Any]:
    """Scalar and string attributes, decoded to JSON-friendly values."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str | int | float | bool):
            out[f"{prefix}{key}"] = value
    return out
