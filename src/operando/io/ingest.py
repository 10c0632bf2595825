"""Ingest beamline files into operando datasets, out of core.

Every input is opened lazily (:mod:`operando.io.readers`), checked from its
headers before the output is touched, labelled with units
(:mod:`operando.io.layout`) and written chunk by chunk by
:func:`operando.io.store.write_dataset`, which marks the output complete only
once whole. Float inputs are checked for NaN/inf block by block *during* the
write; a bad block aborts it and the output stays unmarked.

XANES conventions
-----------------
* ``sample`` holds scans × energies frames, scan-major (all energies of scan 0,
  then scan 1, ...).
* ``flat`` holds either the same scans × energies frames (one reference per
  frame) or one set of E frames, reused for every scan.
* ``dark`` (optional) is one frame or a stack, averaged to one frame.
* A folder of Xradia ``.xrm`` files carries its own energies (header, else the
  file name) and scans (``repNN``); repeated frames of a (scan, energy) are
  averaged. Sample and flat may be the same folder: reference files are the
  ones with ``_ref_`` in their name, sample files all the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from operando.config import config
from operando.errors import (
    ConfigError,
    EnergyListError,
    EnergyOrderError,
    FrameCountError,
    InputNotFoundError,
    ShapeMismatchError,
)
from operando.io.chunking import choose_chunks
from operando.io.layout import CT_DIMS, XANES_DIMS, ct_dataset, xanes_dataset
from operando.io.readers import Frames, check_finite, is_xrm_folder, open_frames, read_xrm_folder
from operando.io.store import mark_complete, prepare_output, write_dataset
from operando.io.xanes import count_clipped, lazy_absorbance

__all__ = ["build_ct", "build_xanes", "ingest_ct", "ingest_xanes", "read_energies"]

log = logging.getLogger(__name__)
PathLike = str | Path


def read_energies(path: PathLike) -> np.ndarray:
    """Energies in eV from a text file, one per line (blank lines and ``#`` comments ignored).

    Returns
    -------
    ndarray of float64, shape (E,)

    Raises
    ------
    InputNotFoundError, EnergyListError, EnergyOrderError
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(path, "no such energies file")
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            values.append(float(text))
        except ValueError:
            raise EnergyListError(path, f"line {number}: {text!r} is not a number") from None
    if not values:
        raise EnergyListError(path, "file lists no energies")
    return check_energies(np.asarray(values, dtype=np.float64), path)


def check_energies(energies: Sequence[float], where: object) -> np.ndarray:
    """Return ``energies`` as float64 if finite and strictly increasing, else raise EnergyOrderError."""
    energies = np.asarray(energies, dtype=np.float64).ravel()
    if not np.all(np.isfinite(energies)):
        raise EnergyOrderError(where, "energies include NaN or inf")
    steps = np.diff(energies)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise EnergyOrderError(
            where,
            f"energies are not strictly increasing: {energies[i]:g} eV is followed by {energies[i + 1]:g} eV",
        )
    return energies


# ---------------------------------------------------------------------------- CT


def build_ct(
    inputs: Sequence[PathLike],
    *,
    voxel_size_um: float,
    times_min: Sequence[float] | None = None,
    dataset_path: str | None = None,
) -> xr.Dataset:
    """Lazy CT dataset ``intensity`` (time, z, y, x) from one volume per timestep.

    Reads headers only; the voxels stay on disk as dask chunks of a few slices.

    Raises
    ------
    InputNotFoundError, UnsupportedFormatError, TruncatedFileError,
    UnsupportedDtypeError, ShapeMismatchError, ConfigError
    """
    if not inputs:
        raise ConfigError(
            "inputs", "no CT volumes given", remedy="Pass one volume (file or folder) per timestep."
        )
    if not (np.isfinite(voxel_size_um) and voxel_size_um > 0):
        raise ConfigError("--voxel-size", f"voxel size {voxel_size_um} µm must be a positive number")
    if times_min is not None and len(times_min) != len(inputs):
        raise ShapeMismatchError(
            "--times",
            f"{len(times_min)} times for {len(inputs)} volumes",
            remedy="Give one time in minutes per volume.",
        )
    volumes = [open_frames(p, dataset_path=dataset_path) for p in inputs]
    _check_same_shape(volumes)
    # Read in the output's own chunks: each task reads one chunk's window, no rechunk.
    (_, *chunks) = _policy_chunks((len(volumes), *volumes[0].data.shape), volumes[0].data.dtype, CT_DIMS)
    data = da.stack([check_finite(v.with_chunks(tuple(chunks)).data, v.path) for v in volumes])
    attrs = {
        "source_files": [str(Path(v.path).resolve()) for v in volumes],
        "voxel_size_um": float(voxel_size_um),
        **volumes[0].attrs,
    }
    return ct_dataset(data, voxel_size_um=voxel_size_um, times_min=times_min, attrs=attrs)


def ingest_ct(
    inputs: Sequence[PathLike],
    output: PathLike,
    *,
    voxel_size_um: float,
    times_min: Sequence[float] | None = None,
    dataset_path: str | None = None,
    overwrite: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> Path:
    """Ingest a CT time series, one volume per timestep, into ``output``.

    Parameters
    ----------
    inputs : sequence of str or Path
        Per timestep: a 3D/multi-page TIFF, a folder of 2D TIFF slices, an HDF5
        file (``dataset_path``), a ``.npy`` or a zarr array; all of shape (Z, Y, X).
    output : str or Path
        The zarr store to write.
    voxel_size_um : float, keyword-only
        Isotropic voxel size in µm.
    times_min : sequence of float, optional, keyword-only
        Time of each volume in minutes (default 0, 1, 2, ...).
    dataset_path : str, optional, keyword-only
        Dataset inside HDF5 inputs, or array inside zarr stores.
    overwrite : bool, keyword-only
        Replace an existing dataset at ``output``.
    client : distributed.Client, optional, keyword-only
        Compute on its cluster; without one, dask's local threaded scheduler.
    quiet : bool, keyword-only
        No progress bar.

    Returns
    -------
    Path
        ``output``, holding ``intensity`` (time, z, y, x), marked complete.
    """
    _fail_fast(output, overwrite, inputs)
    ds = build_ct(inputs, voxel_size_um=voxel_size_um, times_min=times_min, dataset_path=dataset_path)
    return write_dataset(ds, output, overwrite=overwrite, client=client, quiet=quiet)


# ------------------------------------------------------------------------- XANES


def build_xanes(
    sample: PathLike,
    flat: PathLike,
    *,
    energies_ev: Sequence[float] | None = None,
    dark: PathLike | None = None,
    scans: int | None = None,
    pixel_size_um: float | None = None,
    dataset_path: str | None = None,
) -> xr.Dataset:
    """Lazy XANES dataset ``absorbance`` (scan, energy, y, x); see the module notes.

    Raises
    ------
    EnergyListError, EnergyOrderError, FrameCountError, ShapeMismatchError,
    InputNotFoundError, UnsupportedFormatError, TruncatedFileError, UnsupportedDtypeError
    """
    s = _open_xanes(sample, reference=False, dataset_path=dataset_path)
    f = _open_xanes(flat, reference=True, dataset_path=dataset_path)
    energies = _energies(s, f, energies_ev)
    n_e = len(energies)
    n_s = _scan_count(s, n_e, scans)
    n_f = f.data.shape[0]
    if n_f not in (n_e, n_s * n_e):
        raise FrameCountError(
            f.path,
            f"flat has {n_f} frames; expected {n_e} (one per energy, reused for every scan) or {n_s * n_e} ({n_s} scans × {n_e} energies)",
        )
    frames = [s, f]
    dark_frame = None
    if dark is not None:
        d = _open_xanes(dark, reference=False, dataset_path=dataset_path)
        frames.append(d)
        dark_frame = check_finite(d.data, d.path).mean(axis=0, dtype=np.float32)
    _check_same_shape(frames, what="frames")
    y, x = s.data.shape[1:]
    # One frame per read task, cropped to the output's y/x tile: the reshape to
    # (scan, energy) is then free and a task never holds more than its tile.
    (*_, cy, cx) = _policy_chunks((n_s, n_e, y, x), np.float32, XANES_DIMS)
    stack = check_finite(s.with_chunks((1, cy, cx)).data, s.path).reshape(n_s, n_e, y, x)
    flats = check_finite(f.with_chunks((1, cy, cx)).data, f.path).reshape(n_f // n_e, n_e, y, x)
    absorb = lazy_absorbance(stack, flats, dark_frame)
    pixel = _pixel_size(pixel_size_um, s, f)
    attrs = {
        "source_sample": str(Path(sample).resolve()),
        "source_flat": str(Path(flat).resolve()),
        **({"source_dark": str(Path(dark).resolve())} if dark is not None else {}),
        "flat_per_scan": n_f == n_s * n_e,
        "pixel_size_source": "given" if pixel_size_um is not None else "file header",
        **s.attrs,
    }
    return xanes_dataset({"absorbance": absorb}, energies_ev=energies, pixel_size_um=pixel, attrs=attrs)


def ingest_xanes(
    sample: PathLike,
    flat: PathLike,
    output: PathLike,
    *,
    energies_ev: Sequence[float] | None = None,
    dark: PathLike | None = None,
    scans: int | None = None,
    pixel_size_um: float | None = None,
    dataset_path: str | None = None,
    overwrite: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> Path:
    """Ingest XANES transmission frames as ``absorbance`` (float32; scan, energy, y, x).

    Parameters
    ----------
    sample, flat : str or Path
        Frame stacks (TIFF, HDF5, npy, zarr) or folders of ``.xrm`` files
        (possibly the same folder); see the module notes for the frame order.
    output : str or Path
        The zarr store to write.
    energies_ev : sequence of float, optional, keyword-only
        Energies of one scan in eV, strictly increasing; required unless the
        inputs carry energies (Xradia files), and then must agree with them.
    dark : str or Path, optional, keyword-only
        Dark frame(s), averaged.
    scans : int, optional, keyword-only
        Number of scans, checked against the frame count.
    pixel_size_um : float, optional, keyword-only
        Pixel size in µm; required unless the inputs carry it (Xradia files),
        and then it overrides the header.
    dataset_path : str, optional, keyword-only
        Dataset inside HDF5 inputs.
    overwrite : bool, keyword-only
        Replace an existing dataset at ``output``.
    client : distributed.Client, optional, keyword-only
        Compute on its cluster; without one, dask's local threaded scheduler.
    quiet : bool, keyword-only
        No progress bar.

    Returns
    -------
    Path
        ``output``. ``absorbance.attrs["clipped_pixels"]`` counts pixels whose
        transmission was clipped (see :mod:`operando.io.xanes`).
    """
    inputs = [p for p in (sample, flat, dark) if p is not None]
    _fail_fast(output, overwrite, inputs)
    ds = build_xanes(
        sample,
        flat,
        energies_ev=energies_ev,
        dark=dark,
        scans=scans,
        pixel_size_um=pixel_size_um,
        dataset_path=dataset_path,
    )
    output = write_dataset(ds, output, overwrite=overwrite, complete=False, client=client, quiet=quiet)
    # Counted from the written result, so the inputs are read only once.
    arr = zarr.open_array(str(output), path="absorbance", mode="r+")
    clipped = count_clipped(da.from_zarr(arr), client=client)
    arr.attrs["clipped_pixels"] = clipped
    if clipped:
        log.warning(
            "%s: %d pixel(s) had a transmission ratio at or below the floor and were clipped", output, clipped
        )
    mark_complete(output)
    return output


def _open_xanes(path: PathLike, *, reference: bool, dataset_path: str | None) -> Frames:
    if is_xrm_folder(path):
        return read_xrm_folder(path, reference=reference)
    return open_frames(path, dataset_path=dataset_path)


def _energies(sample: Frames, flat: Frames, given: Sequence[float] | None) -> np.ndarray:
    own = sample.energies_ev
    if given is None and own is None:
        raise EnergyListError(sample.path, "the input carries no energies and none were given")
    if given is not None:
        energies = check_energies(given, "energies")
        if own is not None and (own.shape != energies.shape or not np.allclose(own, energies, atol=0.05)):
            raise EnergyListError(
                sample.path, f"energies given {energies.tolist()} differ from the file's {own.tolist()}"
            )
    else:
        energies = check_energies(own, sample.path)
    theirs = flat.energies_ev
    if theirs is not None and (
        theirs.shape != energies.shape or not np.allclose(theirs, energies, atol=0.05)
    ):
        raise EnergyListError(
            flat.path, f"flat energies {theirs.tolist()} differ from the sample's {energies.tolist()}"
        )
    return energies


def _scan_count(sample: Frames, n_energies: int, scans: int | None) -> int:
    n = sample.data.shape[0]
    if n % n_energies:
        raise FrameCountError(sample.path, f"{n} frames is not a multiple of {n_energies} energies")
    if scans is not None and scans * n_energies != n:
        raise FrameCountError(sample.path, f"{n} frames is not {scans} scans × {n_energies} energies")
    return n // n_energies


def _pixel_size(given: float | None, *frames: Frames) -> float:
    found = next((f.pixel_size_um for f in frames if f.pixel_size_um), None)
    size = given if given is not None else found
    if size is None:
        raise ConfigError(
            "--pixel-size",
            f"{frames[0].path} carries no pixel size",
            remedy="Pass --pixel-size UM (pixel_size_um=...).",
        )
    if not (np.isfinite(size) and size > 0):
        raise ConfigError("--pixel-size", f"pixel size {size} µm must be a positive number")
    return float(size)


def _policy_chunks(
    shape: tuple[int, ...], dtype: np.typing.DTypeLike, dims: Sequence[str]
) -> tuple[int, ...]:
    return choose_chunks(
        shape,
        dtype,
        dims,
        target_mib=config.get("chunks.target_mib"),
        energy_chunk=config.get("chunks.energy"),
    )


def _check_same_shape(frames: Sequence[Frames], what: str = "volumes") -> None:
    ref = frames[0]
    for other in frames[1:]:
        a, b = ref.data.shape, other.data.shape
        if (a[1:] if what == "frames" else a) != (b[1:] if what == "frames" else b):
            raise ShapeMismatchError(other.path, f"{what} of shape {b} differ from {ref.path} of shape {a}")


def _fail_fast(output: PathLike, overwrite: bool, inputs: Sequence[PathLike]) -> None:
    """Refuse (or, with ``overwrite``, clear) the output before any input is read."""
    prepare_output(output, overwrite=overwrite, inputs=tuple(Path(p) for p in inputs))
