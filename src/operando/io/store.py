"""operando datasets on disk: zarr v3 groups that ``xarray.open_zarr`` opens directly.

A dataset is written in three steps, so that a crash never leaves something that
looks whole:

1. :func:`write_dataset` writes metadata and every chunk (xarray ``to_zarr`` over
   the lazy dask graph, one task per chunk; empty chunks are written too, so a
   chunk's presence means it was written);
2. :func:`mark_complete` checks every chunk of every array is on disk, then writes
   the group attribute ``operando:complete`` last;
3. the metadata is consolidated so that plain ``xr.open_zarr(path)`` is fast.

:func:`open_dataset` refuses a dataset without the marker and names what is missing.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import warnings
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from operando import __version__
from operando.config import config
from operando.engine.progress import compute_with_progress
from operando.errors import (
    DatasetLayoutError,
    IncompleteDatasetError,
    InputNotFoundError,
    OutputExistsError,
)
from operando.io.chunking import choose_chunks
from operando.io.codecs import compressors

log = logging.getLogger("operando.io")

__all__ = [
    "COMPLETE_ATTR",
    "missing_chunks",
    "open_dataset",
    "open_root",
    "prepare_output",
    "write_dataset",
    "write_with_truth",
]

COMPLETE_ATTR = "operando:complete"


def prepare_output(path: str | Path, *, overwrite: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    """Check that ``path`` may be written; remove an old dataset there if ``overwrite``.

    Refuses to overwrite anything that is not a zarr store, and any path that is
    also an input, contains one or lies inside one, so that nothing a user has is
    ever lost or mixed with new files.
    """
    path = Path(path)
    resolved = path.resolve()
    for src in inputs:
        src = Path(src).resolve()
        if resolved == src or resolved in src.parents:
            raise OutputExistsError(
                path,
                f"the output would overwrite the input {src}",
                remedy="Write the output to a new path.",
            )
        if src in resolved.parents:
            raise OutputExistsError(
                path,
                f"the output would be written inside the input {src}",
                remedy="Write the output outside the input folder.",
            )
    if not path.exists():
        return path
    if not overwrite:
        raise OutputExistsError(path, "output path exists already")
    if not (path / "zarr.json").is_file():
        raise OutputExistsError(
            path,
            "exists and is not a zarr store, so --overwrite will not delete it",
            remedy="Remove it yourself or choose another output path.",
        )
    shutil.rmtree(path)
    return path


def write_dataset(
    ds: xr.Dataset,
    path: str | Path,
    *,
    overwrite: bool = False,
    group: str | None = None,
    codec: str | None = None,
    level: int | None = None,
    target_mib: float | None = None,
    energy_chunk: int | None = None,
    complete: bool = True,
    client: Any | None = None,
    quiet: bool = True,
) -> Path:
    """Write ``ds`` to a zarr v3 dataset at ``path`` chunk by chunk, then mark it complete.

    Parameters
    ----------
    ds : xarray.Dataset
        Lazy (dask-backed) or in-memory variables; data variables are rechunked
        to the chunking policy (:func:`operando.io.chunking.choose_chunks`).
    path : str or Path
        Output zarr store.
    overwrite : bool, keyword-only
        Replace an existing dataset at ``path``.
    group : str, optional, keyword-only
        Write into this sub-group of ``path`` (which must exist), e.g. ``"truth"``.
    codec, level, target_mib, energy_chunk : keyword-only
        Override ``codec.name``, ``codec.level``, ``chunks.target_mib``, ``chunks.energy``.
    complete : bool, keyword-only
        Mark the dataset complete at the end (pass False when more groups follow).
    client : distributed.Client, optional, keyword-only
        Compute on its cluster; without one, dask's local threaded scheduler.
    quiet : bool, keyword-only
        No progress bar.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if group is None:
        prepare_output(path, overwrite=overwrite)
    target_mib = config.get("chunks.target_mib") if target_mib is None else target_mib
    energy_chunk = config.get("chunks.energy") if energy_chunk is None else energy_chunk
    comp = compressors(
        codec or config.get("codec.name"), config.get("codec.level") if level is None else level
    )
    encoding: dict[Hashable, dict[str, object]] = {}
    chunked = {}
    for name, var in ds.variables.items():
        # Coordinates are small and read whole on open: one chunk, not one file per timestep.
        chunks = (
            choose_chunks(
                var.shape,
                var.dtype,
                [str(d) for d in var.dims],
                target_mib=target_mib,
                energy_chunk=energy_chunk,
            )
            if name in ds.data_vars
            else tuple(max(n, 1) for n in var.shape)
        )
        encoding[name] = {"chunks": chunks, "compressors": comp, **_fill_encoding(var)}
        if name in ds.data_vars:
            chunked[name] = var.chunk(dict(zip(var.dims, chunks, strict=True)))
    out = ds.assign(chunked)
    out.attrs = {**ds.attrs, "operando:version": __version__}
    writes = out.to_zarr(
        path,
        group=group,
        mode="w-" if group is None else "w",
        zarr_format=3,
        consolidated=False,
        write_empty_chunks=True,
        encoding=encoding,
        compute=False,
    )
    report = compute_with_progress(
        writes, name=f"{path.name}{'/' + group if group else ''}", client=client, quiet=quiet
    )
    report.nbytes_logical = sum(v.nbytes for v in out.data_vars.values())
    log.info(report.summary())
    if complete:
        mark_complete(path)
    return path


def _fill_encoding(var: xr.Variable) -> dict[str, object]:
    # Integers (labels, counts) have no missing value: a _FillValue would make
    # xarray decode them to float.
    if np.issubdtype(var.dtype, np.integer) or var.dtype == bool:
        return {"_FillValue": None}
    return {}


def mark_complete(path: str | Path) -> None:
    """Write the completion marker on ``path`` once every chunk is on disk.

    Raises
    ------
    IncompleteDatasetError
        If any array of the store lacks a chunk.
    """
    missing = missing_chunks(path)
    if missing:
        raise IncompleteDatasetError(
            path, f"cannot mark complete, chunks are missing: {_describe_missing(missing)}"
        )
    root = zarr.open_group(str(path), mode="r+")
    root.attrs.update({COMPLETE_ATTR: datetime.now(UTC).isoformat(timespec="seconds")})
    with warnings.catch_warnings():
        # Consolidated metadata is a zarr-python extension for v3; xarray reads it.
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def missing_chunks(path: str | Path) -> dict[str, tuple[int, int, tuple[int, ...] | None]]:
    """Arrays of the store at ``path`` (any group) that lack chunks.

    Returns
    -------
    dict
        ``{array path: (missing count, total count, first missing chunk index)}``.
    """
    root = zarr.open_group(str(path), mode="r", use_consolidated=False)
    out = {}
    for name, arr in root.arrays():
        _add_missing(out, name, arr)
    for gname, grp in root.groups():
        for name, arr in grp.arrays():
            _add_missing(out, f"{gname}/{name}", arr)
    return out


def _add_missing(out: dict, name: str, arr: zarr.Array) -> None:
    total = arr.nchunks
    present = arr.nchunks_initialized
    if present < total:
        out[name] = (total - present, total, _first_missing(arr))


def _first_missing(arr: zarr.Array) -> tuple[int, ...] | None:
    store_root = Path(str(arr.store_path.store.root)) / arr.store_path.path / "c"
    for idx in itertools.product(*(range(n) for n in arr.cdata_shape)):
        if not store_root.joinpath(*map(str, idx)).exists():
            return idx
    return None


def _describe_missing(missing: Mapping[str, tuple[int, int, tuple[int, ...] | None]]) -> str:
    return "; ".join(
        f"{name}: {n} of {total} chunks (first at chunk index {first})"
        for name, (n, total, first) in missing.items()
    )


def open_root(path: Path) -> zarr.Group:
    """The root group of the dataset at ``path``, read from its own metadata.

    Never from consolidated metadata, which could predate the completion marker.
    """
    if not path.exists():
        raise InputNotFoundError(path, "no such dataset")
    if not (path / "zarr.json").is_file():
        raise DatasetLayoutError(path, "not a zarr v3 store (no zarr.json)")
    return zarr.open_group(str(path), mode="r", use_consolidated=False)


def write_with_truth(
    data: xr.Dataset, truth: xr.Dataset, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``data`` to ``path`` and ``truth`` to its ``truth`` group; mark complete when both are whole."""
    path = prepare_output(path, overwrite=overwrite)
    write_dataset(data, path, complete=False)
    write_dataset(truth, path, group="truth", complete=False)
    mark_complete(path)
    return path


def open_dataset(
    path: str | Path,
    *,
    group: str | None = None,
    require_complete: bool = True,
    chunks: Mapping[str, int] | None = None,
) -> xr.Dataset:
    """Open an operando dataset lazily (dask arrays with the on-disk chunks by default).

    Parameters
    ----------
    path : str or Path
        The zarr store.
    group : str, optional, keyword-only
        A sub-group, e.g. ``"truth"`` for synthetic ground truth.
    require_complete : bool, keyword-only
        Refuse a dataset that was never marked complete (default).
    chunks : mapping of str to int, optional, keyword-only
        Dask chunk size per dimension, multiples of the on-disk chunks (e.g. whole
        columns along one axis: one zarr read of several chunks per task, which
        zarr decodes concurrently); other dimensions keep the on-disk chunks.

    Raises
    ------
    InputNotFoundError, DatasetLayoutError, IncompleteDatasetError
    """
    path = Path(path)
    root = open_root(path)
    if require_complete and COMPLETE_ATTR not in root.attrs:
        missing = missing_chunks(path)
        detail = (
            _describe_missing(missing)
            if missing
            else "every chunk is present but the marker was never written"
        )
        raise IncompleteDatasetError(path, f"dataset was never marked complete ({detail})")
    return xr.open_zarr(
        str(path),
        group=group,
        consolidated=group is None and COMPLETE_ATTR in root.attrs,
        zarr_format=3,
        **({} if chunks is None else {"chunks": dict(chunks)}),
    )
