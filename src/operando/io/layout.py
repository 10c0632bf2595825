"""The operando dataset model: variable names, dims, coordinates and units.

CT
    ``intensity`` with dims ``(time, z, y, x)``; ``z`` is the electrode normal by
    default. ``time`` in min, ``z``/``y``/``x`` in µm.
XANES
    ``counts`` (raw) and/or ``absorbance`` with dims ``(scan, energy, y, x)``;
    ``energy`` in eV, ``y``/``x`` in µm.
Labels
    uint8 with CF ``flag_values`` / ``flag_meanings`` naming the classes.

Builders here only label arrays; they never compute them, so lazy inputs stay lazy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "CT_DIMS",
    "XANES_DIMS",
    "ct_dataset",
    "label_attrs",
    "label_classes",
    "spatial_coord",
    "xanes_dataset",
]

CT_DIMS = ("time", "z", "y", "x")
XANES_DIMS = ("scan", "energy", "y", "x")
UM = "µm"


def spatial_coord(dim: str, n: int, size_um: float) -> xr.Variable:
    """Pixel-centre positions ``0, size, 2·size, ...`` in µm along ``dim``."""
    return xr.Variable(
        dim,
        np.arange(n, dtype=np.float64) * float(size_um),
        {"units": UM, "long_name": f"{dim} position"},
    )


def ct_dataset(
    intensity: Any,
    *,
    voxel_size_um: float,
    times_min: Sequence[float] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str = "intensity",
) -> xr.Dataset:
    """Label a CT time series ``intensity`` of shape (T, Z, Y, X) with units.

    Parameters
    ----------
    intensity : array-like of shape (T, Z, Y, X)
        Reconstructed volumes, one per timestep (dask arrays stay lazy).
    voxel_size_um : float, keyword-only
        Isotropic voxel size in µm.
    times_min : sequence of float, optional, keyword-only
        Acquisition time of each timestep in minutes (default 0, 1, 2, ...).
    attrs : mapping, optional, keyword-only
        Acquisition metadata (source files, beamline fields).
    """
    t, z, y, x = intensity.shape
    times = np.arange(t, dtype=np.float64) if times_min is None else np.asarray(times_min, dtype=np.float64)
    coords = {
        "time": xr.Variable("time", times, {"units": "min", "long_name": "time since start"}),
        **{d: spatial_coord(d, n, voxel_size_um) for d, n in zip("zyx", (z, y, x), strict=True)},
    }
    var = xr.Variable(CT_DIMS, intensity, {"long_name": "reconstructed attenuation", "units": "1"})
    meta = {
        "modality": "ct",
        "voxel_size_um": float(voxel_size_um),
        "normal_axis": "z",
        **(attrs or {}),
    }
    return xr.Dataset({name: var}, coords=coords, attrs=meta)


def xanes_dataset(
    variables: Mapping[str, Any],
    *,
    energies_ev: Sequence[float],
    pixel_size_um: float,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Label XANES stacks of shape (S, E, Y, X), e.g. ``{"absorbance": a}``.

    Parameters
    ----------
    variables : mapping of str to array-like of shape (S, E, Y, X)
        ``counts`` (raw), ``flat``, ``dark`` and/or ``absorbance``.
    energies_ev : sequence of float, keyword-only
        Beam energy of each frame in a scan, strictly increasing, in eV.
    pixel_size_um : float, keyword-only
        Pixel size in µm.
    """
    first = next(iter(variables.values()))
    s, _, y, x = first.shape
    coords = {
        "scan": xr.Variable("scan", np.arange(s), {"long_name": "XANES scan index"}),
        "energy": xr.Variable(
            "energy",
            np.asarray(energies_ev, dtype=np.float64),
            {"units": "eV", "long_name": "X-ray energy"},
        ),
        "y": spatial_coord("y", y, pixel_size_um),
        "x": spatial_coord("x", x, pixel_size_um),
    }
    data = {name: xr.Variable(XANES_DIMS, arr, _XANES_ATTRS.get(name, {})) for name, arr in variables.items()}
    meta = {"modality": "xanes", "pixel_size_um": float(pixel_size_um), **(attrs or {})}
    return xr.Dataset(data, coords=coords, attrs=meta)


_XANES_ATTRS = {
    "counts": {"long_name": "sample transmission counts", "units": "counts"},
    "flat": {"long_name": "reference (flat-field) counts", "units": "counts"},
    "dark": {"long_name": "dark counts", "units": "counts"},
    "absorbance": {"long_name": "absorbance -ln((I - dark) / (flat - dark))", "units": "1"},
}


def label_attrs(classes: Sequence[str]) -> dict[str, Any]:
    """CF flag attributes for uint8 labels 0..K named by ``classes``."""
    if len(classes) > 256:
        raise ValueError(f"{len(classes)} classes do not fit uint8 labels")
    return {
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in classes),
        "long_name": "class label",
    }


def label_classes(var: xr.DataArray) -> dict[int, str]:
    """``{value: class name}`` read back from a label variable's CF attributes."""
    values = var.attrs["flag_values"]
    names = var.attrs["flag_meanings"].split()
    return dict(zip((int(v) for v in values), names, strict=True))
