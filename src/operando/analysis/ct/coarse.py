"""Downsampled-volume registration: the ``mode="downsampled"`` start of :mod:`.register`.

The reference and a timestep are reduced by ``shrink``-fold block means
(:func:`dask.array.coarsen`, chunk by chunk) and the small whole volumes are
registered in one SimpleITK run (:func:`.register._register_box`). The result
is either the transform itself or the start of the full-resolution sub-volume
registration (``refine=True``): the whole volume's structure brings each small
box near its optimum, which a box alone may miss for large motions.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from operando.analysis.ct.register import RegistrationOptions, _Fit, _register_box

__all__ = ["as_initial", "coarse_fit"]


def coarse_fit(
    intensity: xr.DataArray,
    ref: int,
    t: int,
    *,
    shrink: int,
    origin_um: np.ndarray,
    spacing_um: float,
    options: RegistrationOptions,
    threads: int,
) -> Delayed:
    """Delayed registration of the ``shrink``-fold block means of timesteps ``ref`` and ``t``.

    Parameters
    ----------
    intensity : xarray.DataArray of shape (T, Z, Y, X)
        Lazy series; only the two timesteps are read, chunk by chunk.
    ref, t : int
        Fixed and moving timestep.
    shrink : int, keyword-only
        Block edge of the mean (voxels); trailing voxels that fill no block are dropped.
    origin_um : ndarray of shape (3,), keyword-only
        Coordinate of voxel (0, 0, 0), z y x.
    spacing_um : float, keyword-only
        Full-resolution voxel size.
    options : RegistrationOptions, keyword-only
    threads : int, keyword-only
        SimpleITK threads of the task.

    Returns
    -------
    dask.delayed.Delayed
        Of a ``_Fit`` about the centre of the reduced volume.
    """
    axes = dict.fromkeys(range(3), shrink)
    fixed, moving = (da.coarsen(np.mean, intensity.data[i], axes, trim_excess=True) for i in (ref, t))
    # A block mean sits at the centre of its block: half a block minus half a voxel in.
    coarse_origin = origin_um + (shrink - 1) / 2 * spacing_um
    initial = (np.zeros(3), np.zeros(3), origin_um)
    return dask.delayed(_register_box)(
        fixed, moving, coarse_origin, spacing_um * shrink, initial, options, threads
    )


def as_initial(fit: _Fit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``(angles_deg, translation_um, centre_um)`` start that :func:`._register_box` takes."""
    return fit.angles_deg, fit.translation_um, fit.centre
