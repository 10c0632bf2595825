"""Raw-file sinks: write a phantom as beamline-style TIFFs, for "synthesize, then ingest".

Pages are computed a few at a time and streamed into the file, so a phantom
larger than memory can be written.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import xarray as xr

from operando.errors import OutputExistsError
from operando.io.store import mark_complete, prepare_output, write_dataset
from operando.synth.ct import make_ct
from operando.synth.xanes import make_xanes

__all__ = ["synth_ct_raw", "synth_xanes_raw", "write_ct_tiffs", "write_xanes_tiffs"]

_CT_SHAPE = inspect.signature(make_ct).parameters["shape"].default


def _pages(var: xr.DataArray, budget_bytes: int = 64 * 2**20) -> Iterator[np.ndarray]:
    """The 2D pages of ``var`` (..., N, Y, X) in C order.

    Computed a few whole chunk-rows along N at a time (up to ``budget_bytes``):
    each chunk is computed once, and memory never holds the whole array.
    """
    data = var.data
    row_bytes = data.dtype.itemsize * data.shape[-1] * data.shape[-2]
    for lead in np.ndindex(*data.shape[:-3]):
        stack = data[lead]
        start = stop = 0
        for n in stack.chunks[0]:
            stop += n
            if (stop - start) * row_bytes >= budget_bytes or stop == stack.shape[0]:
                yield from np.asarray(stack[start:stop])
                start = stop


def _write_stack(path: Path, var: xr.DataArray) -> Path:
    shape = (int(np.prod(var.shape[:-2])), *var.shape[-2:])
    big = np.prod(shape) * var.dtype.itemsize > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        tif.write(_pages(var), shape=shape, dtype=var.dtype, photometric="minisblack")
    return path


def write_ct_tiffs(data: xr.Dataset, outdir: str | Path) -> list[Path]:
    """Write ``data.intensity`` as one 3D TIFF per timestep (``t000.tif``, ...) plus ``times.txt``.

    Returns
    -------
    list of Path
        The TIFF files, in time order.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    var = data["intensity"]
    paths = [_write_stack(outdir / f"t{t:03d}.tif", var[t]) for t in range(var.sizes["time"])]
    (outdir / "times.txt").write_text("".join(f"{t!r}\n" for t in data["time"].values.tolist()))
    return paths


def write_xanes_tiffs(data: xr.Dataset, outdir: str | Path) -> list[Path]:
    """Write ``counts``, ``flat`` and ``dark`` as ``sample.tif``, ``flat.tif``, ``dark.tif``.

    Each holds scans × energies frames, scan-major; ``energies.txt`` lists one
    energy in eV per line.

    Returns
    -------
    list of Path
        sample, flat and dark TIFFs.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = {"counts": "sample.tif", "flat": "flat.tif", "dark": "dark.tif"}
    paths = [_write_stack(outdir / file, data[var]) for var, file in names.items()]
    (outdir / "energies.txt").write_text("".join(f"{e!r}\n" for e in data["energy"].values.tolist()))
    return paths


def _prepare_raw(outdir: str | Path, overwrite: bool, names: tuple[str, ...]) -> Path:
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()):
        if not overwrite:
            raise OutputExistsError(outdir, "output folder exists already and is not empty")
        # Only what a previous run wrote, never anything else in the folder.
        for name in names:
            for old in outdir.glob(name):
                old.unlink()
    prepare_output(outdir / "truth.zarr", overwrite=overwrite)
    return outdir


def _write_truth(truth: xr.Dataset, path: Path) -> None:
    write_dataset(truth, path, complete=False)
    mark_complete(path)


def synth_ct_raw(outdir: str | Path, *, overwrite: bool = False, **params: object) -> Path:
    """Write a CT phantom (:func:`~operando.synth.make_ct` ``**params``) as raw TIFFs.

    ``outdir`` gets ``t000.tif`` ... (one 3D TIFF per timestep), ``times.txt`` and
    ``truth.zarr`` (the ground truth, marked complete).
    """
    outdir = _prepare_raw(outdir, overwrite, ("t[0-9][0-9][0-9].tif", "times.txt"))
    shape = params.get("shape", _CT_SHAPE)
    # Thin z-chunks bound the memory of streaming pages; the values do not depend on them.
    params.setdefault("chunks", (1, min(8, shape[1]), shape[2], shape[3]))
    data, truth = make_ct(**params)
    write_ct_tiffs(data, outdir)
    _write_truth(truth, outdir / "truth.zarr")
    return outdir


def synth_xanes_raw(outdir: str | Path, *, overwrite: bool = False, **params: object) -> Path:
    """Write a XANES phantom (:func:`~operando.synth.make_xanes` ``**params``) as raw TIFFs.

    ``outdir`` gets ``sample.tif``, ``flat.tif``, ``dark.tif`` (scans × energies
    frames, scan-major), ``energies.txt`` and ``truth.zarr``.
    """
    outdir = _prepare_raw(outdir, overwrite, ("sample.tif", "flat.tif", "dark.tif", "energies.txt"))
    data, truth = make_xanes(**params)
    write_xanes_tiffs(data, outdir)
    _write_truth(truth, outdir / "truth.zarr")
    return outdir
