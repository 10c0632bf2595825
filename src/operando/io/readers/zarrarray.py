"""Zarr reader: an existing zarr array (``store.zarr/var`` or a bare array path) as lazy frames."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import zarr

from operando.errors import InputNotFoundError, UnsupportedFormatError
from operando.io.readers._frames import Frames, check_dtype

__all__ = ["read_zarr", "split_zarr_path"]


def split_zarr_path(path: str | Path) -> tuple[Path, str | None]:
    """Split ``a/b.zarr/group/var`` into the store ``a/b.zarr`` and ``group/var``."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.suffix == ".zarr":
            inner = path.relative_to(parent).as_posix()
            return parent, None if inner == "." else inner
    return path, None


def read_zarr(path: str | Path, array_path: str | None = None) -> Frames:
    """Open a 2D or 3D zarr array lazily as frames (N, Y, X), keeping its chunks.

    Parameters
    ----------
    path : str or Path
        ``store.zarr/var`` or the path of a zarr array.
    array_path : str, optional
        Array inside the store (overrides a path given after ``.zarr``).

    Raises
    ------
    InputNotFoundError, UnsupportedFormatError, UnsupportedDtypeError
    """
    store, inner = split_zarr_path(path)
    inner = array_path or inner
    try:
        node = zarr.open(str(store), mode="r", path=inner or "")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as err:
        raise InputNotFoundError(path, f"no zarr array {inner!r} in store {store}") from err
    if not isinstance(node, zarr.Array):
        names = ", ".join(sorted(node.array_keys())) or "none"
        raise InputNotFoundError(
            path,
            f"is a zarr group, not an array (arrays: {names})",
            remedy="Append the array name, e.g. cell.zarr/intensity.",
        )
    check_dtype(node.dtype, path)
    if node.ndim not in (2, 3):
        raise UnsupportedFormatError(
            path, f"zarr array has shape {node.shape}; a 2D frame or 3D stack is needed"
        )
    data = da.from_zarr(str(store), component=inner)
    data = data if data.ndim == 3 else data[None]
    attrs = {f"zarr:{k}": v for k, v in node.attrs.items() if isinstance(v, str | int | float | bool)}
    return Frames(data, Path(path), attrs)
