"""Readers: every supported input as a lazy dask stack of 2D frames, frame axis first.

:func:`open_frames` picks the reader from the path:

============================  =========================================
``*.tif``, ``*.tiff``         multi-page/3D TIFF (:mod:`.tiff`)
folder of ``*.tif``           2D slices in natural order (``im2`` < ``im10``)
``*.h5``, ``*.hdf5``, ...     a named dataset, default ``/exchange/data``
``*.npy``                     memory-mapped array
``*.zarr[/array]``            an existing zarr array
``*.xrm``, ``*.txrm``         Xradia images; a folder of them via :func:`read_xrm_folder`
============================  =========================================
"""

from __future__ import annotations

from pathlib import Path

from operando.errors import InputNotFoundError, UnsupportedFormatError
from operando.io.readers._frames import Frames, check_dtype, check_finite
from operando.io.readers.hdf5 import HDF5_SUFFIXES, read_hdf5
from operando.io.readers.npy import read_npy
from operando.io.readers.tiff import TIFF_SUFFIXES, read_tiff, read_tiff_folder
from operando.io.readers.xrm import XRM_SUFFIXES, read_xrm, read_xrm_folder
from operando.io.readers.zarrarray import read_zarr, split_zarr_path

__all__ = [
    "Frames",
    "check_dtype",
    "check_finite",
    "is_xrm_folder",
    "open_frames",
    "read_hdf5",
    "read_npy",
    "read_tiff",
    "read_tiff_folder",
    "read_xrm",
    "read_xrm_folder",
    "read_zarr",
]


def open_frames(path: str | Path, *, dataset_path: str | None = None) -> Frames:
    """Open any supported input lazily as frames of shape (N, Y, X).

    Parameters
    ----------
    path : str or Path
        File, folder of 2D TIFF slices, or zarr array path.
    dataset_path : str, optional, keyword-only
        Dataset inside an HDF5 file or array inside a zarr store.

    Raises
    ------
    InputNotFoundError
        If ``path`` does not exist.
    UnsupportedFormatError
        If no reader handles it.
    """
    path = Path(path)
    store, _ = split_zarr_path(path)
    if store.suffix == ".zarr" or (path / "zarr.json").is_file() or (path / ".zarray").is_file():
        if not store.exists():
            raise InputNotFoundError(path, "no such zarr store")
        return read_zarr(path, dataset_path)
    if not path.exists():
        raise InputNotFoundError(path, "no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir():
        return read_tiff_folder(path)
    if suffix in TIFF_SUFFIXES:
        return read_tiff(path)
    if suffix in HDF5_SUFFIXES:
        return read_hdf5(path, dataset_path)
    if suffix == ".npy":
        return read_npy(path)
    if suffix in XRM_SUFFIXES:
        return read_xrm(path)
    raise UnsupportedFormatError(path, f"file type {suffix or '(none)'!r} is not supported")


def is_xrm_folder(path: str | Path) -> bool:
    """True for a folder holding Xradia ``.xrm``/``.txrm`` files."""
    path = Path(path)
    return path.is_dir() and any(p.suffix.lower() in XRM_SUFFIXES for p in path.iterdir())
