"""Rigid 3D registration of a CT time series to a reference timestep, out of core.

Convention
    Every timestep ``t`` gets a rigid transform ``T_t`` of physical space (µm, in
    the dataset's coordinate frame) mapping a reference-frame point ``q`` to the
    point ``p`` of timestep ``t`` that shows it::

        p = R (q - c) + c + s

    ``R = rotation_matrix(angles_deg)`` rotates (z, y, x) vectors about z, then y,
    then x as in :func:`operando.synth._shapes.rotation_matrix` (``R = Rz Ry Rx``,
    each a right-handed rotation in (z, y, x) index space); ``s`` is
    ``translation_um`` and ``c`` is ``centre_um``, the volume centre. This is the
    synthetic phantom's convention, so its truth compares directly. It is
    SimpleITK's too: with the reference as the fixed image and timestep ``t`` as the
    moving one, ``T_t`` is the fitted ``Euler3DTransform`` (axes reversed to z, y, x).

Method (following the paper: ITK, 6 parameters, correlation metric, sub-volumes)
    ``mode="sub_volumes"`` (default) reads a few boxes (default 300³, spread over
    the volume, see :func:`sub_volume_boxes`) of the reference and of each
    timestep and registers each pair alone (transform centred on the box, which
    decouples rotation and translation). One rigid transform is then fitted to the
    8 corners of every good box as each box maps them (Kabsch,
    :meth:`scipy.spatial.transform.Rotation.align_vectors`): the rotation comes
    from the spread of the boxes' well-determined shifts, not from the weak
    rotation inside any one box. A rigid motion moves every box alike: where the
    boxes' own transforms disagree with the fit by more than
    ``max_disagreement_voxels`` at their centres, structure changed inside some
    box (pits, Li layers, swelling) and the timestep has failed, however well
    each box converged. ``mode="downsampled"`` (:mod:`.coarse`)
    registers ``shrink``-fold block means of the whole volumes, then
    (``refine=True``) starts the sub-volume registration from that result.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dask
import numpy as np
import pandas as pd
import SimpleITK as sitk
import xarray as xr
from scipy.spatial.transform import Rotation

from operando.errors import ReferenceIndexError, RegistrationError, VoxelSizeError

__all__ = ["RegistrationOptions", "estimate_transforms", "rotation_matrix", "write_transforms_csv"]

AXES = ("z", "y", "x")
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class RegistrationOptions:
    """SimpleITK settings of one box registration.

    Attributes
    ----------
    shrink_factors, smoothing_sigmas : tuple of int
        Multi-resolution pyramid, coarse to fine (sigmas in voxels).
    max_iterations, max_samples : int
        Per level: iterations (reaching them is a failure) and metric sample points (random, fixed seed).
    learning_rate_voxels, min_step_voxels : float
        Initial and final step of the regular-step gradient descent, in voxels of shift.
    min_correlation : float
        Below this final correlation a registration has failed.
    max_angle_deg, max_shift_fraction : float
        Sane bounds: larger rotations, or shifts larger than this fraction of the box, are failures.
    max_disagreement_voxels : float
        Largest distance, at a box's centre, between the box's own transform and
        the one fitted to all boxes; above it the timestep has failed.
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    max_iterations: int = 200
    learning_rate_voxels: float = 2.0
    min_step_voxels: float = 1e-3
    max_samples: int = 200_000
    min_correlation: float = 0.3
    max_angle_deg: float = 10.0
    max_shift_fraction: float = 0.25
    max_disagreement_voxels: float = 0.4


@dataclass(frozen=True)
class _Fit:
    """One box registration: transform about ``centre`` (µm, z y x) and the optimizer's report."""

    angles_deg: np.ndarray
    translation_um: np.ndarray
    centre: np.ndarray
    metric: float
    iterations: int
    converged: bool
    disagreement_um: float = 0.0


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """``R = Rz Ry Rx`` for (z, y, x) vectors, from angles about z, y, x in degrees (ndarray (3, 3))."""
    return Rotation.from_euler("XYZ", angles_deg, degrees=True).as_matrix()


def _angles(matrix: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(matrix).as_euler("XYZ", degrees=True)


def _recentre(fit: _Fit, centre: np.ndarray) -> np.ndarray:
    """Translation of the same transform written about ``centre``: ``s + (R - I)(centre - c)``."""
    rot = rotation_matrix(fit.angles_deg)
    return fit.translation_um + (rot - np.eye(3)) @ (centre - fit.centre)


def _image(block: np.ndarray, origin_um: np.ndarray, spacing_um: float) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(block, dtype=np.float32))
    image.SetSpacing([float(spacing_um)] * 3)
    image.SetOrigin([float(v) for v in origin_um[::-1]])
    return image


def _euler(angles_deg: np.ndarray, translation_um: np.ndarray, centre: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in centre[::-1]])
    transform.SetMatrix(rotation_matrix(angles_deg)[::-1, ::-1].ravel().tolist())
    transform.SetTranslation([float(v) for v in translation_um[::-1]])
    return transform


def _method(n_voxels: int, spacing_um: float, opts: RegistrationOptions) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    fractions = [min(1.0, opts.max_samples * f**3 / n_voxels) for f in opts.shrink_factors]
    if min(fractions) < 1:
        # A fixed seed: the same input gives the same transform.
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentagePerLevel(fractions, 42)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=opts.learning_rate_voxels * spacing_um,
        minStep=opts.min_step_voxels * spacing_um,
        numberOfIterations=opts.max_iterations,
        relaxationFactor=0.5,
        # Correlation gradients are tiny: stop on the step size only.
        gradientMagnitudeTolerance=1e-12,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(opts.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(opts.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _register_box(
    fixed: np.ndarray,
    moving: np.ndarray,
    origin_um: np.ndarray,
    spacing_um: float,
    initial: tuple[np.ndarray, np.ndarray, np.ndarray],
    opts: RegistrationOptions,
    threads: int,
) -> _Fit:
    """Register one box pair; the transform is centred on the box, started from ``initial``."""
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    centre = origin_um + (np.array(fixed.shape) - 1) / 2 * spacing_um
    start = _Fit(initial[0], initial[1], initial[2], np.nan, 0, True)
    transform = _euler(initial[0], _recentre(start, centre), centre)
    method = _method(fixed.size, spacing_um, opts)
    method.SetInitialTransform(transform, inPlace=True)
    method.SetNumberOfThreads(threads)
    method.Execute(_image(fixed, origin_um, spacing_um), _image(moving, origin_um, spacing_um))
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)[::-1, ::-1]
    angles = _angles(matrix)
    shift = np.array(transform.GetTranslation())[::-1]
    metric = float(method.GetMetricValue())
    stalled = "maximum number of iterations" in method.GetOptimizerStopConditionDescription().lower()
    sane = np.abs(angles).max() <= opts.max_angle_deg and np.all(
        np.abs(shift) <= _shift_bound(fixed.shape, opts) * spacing_um
    )
    good = bool(np.isfinite(metric) and -metric >= opts.min_correlation and sane and not stalled)
    return _Fit(angles, shift, centre, metric, int(method.GetOptimizerIteration()), good)


def _shift_bound(shape: Sequence[int], opts: RegistrationOptions) -> np.ndarray:
    """Largest believable shift per axis, in voxels.

    A fraction of the box's largest edge, but at most half of each edge: a thin
    static slab (an electrode below its pits) may move by more than a quarter of
    its thickness and still overlap itself enough to register.
    """
    edges = np.array(shape, dtype=np.float64)
    return np.minimum(opts.max_shift_fraction * edges.max(), 0.5 * edges)


def _combine(
    fits: Sequence[_Fit], boxes_um: Sequence[np.ndarray], centre: np.ndarray, tolerance_um: float
) -> _Fit:
    """One rigid transform about ``centre`` fitted to the corners each good box maps (Kabsch).

    It has failed where fewer than half the boxes (or, of several, fewer than two)
    converged, or where a good box's own transform moves the box centre more than
    ``tolerance_um`` away from it.
    """
    good = [(f, b) for f, b in zip(fits, boxes_um, strict=True) if f.converged]
    metric = float(np.mean([f.metric for f in fits]))
    iterations = max(f.iterations for f in fits)
    # One good box of several cannot be checked against the others.
    if len(good) < max(1, len(fits) / 2, min(2, len(fits))):
        first = fits[0]
        return _Fit(first.angles_deg, _recentre(first, centre), centre, metric, iterations, False, np.nan)
    src = np.concatenate([b for _, b in good])
    dst = np.concatenate([_apply(f, b) for f, b in good])
    rot, _ = Rotation.align_vectors(dst - dst.mean(0), src - src.mean(0))
    matrix = rot.as_matrix()
    shift = dst.mean(0) - centre - matrix @ (src.mean(0) - centre)
    fit = _Fit(_angles(matrix), shift, centre, metric, iterations, True)
    gaps = [_apply(f, b.mean(0)) - _apply(fit, b.mean(0)) for f, b in good]
    disagreement = max(float(np.linalg.norm(g)) for g in gaps)
    return _Fit(fit.angles_deg, shift, centre, metric, iterations, disagreement <= tolerance_um, disagreement)


def _apply(fit: _Fit, points_um: np.ndarray) -> np.ndarray:
    """Where ``fit`` maps reference points (..., 3): ``R (q - c) + c + s``."""
    return (points_um - fit.centre) @ rotation_matrix(fit.angles_deg).T + fit.centre + fit.translation_um


def _corners_um(box: Box, origin: np.ndarray, spacing: float) -> np.ndarray:
    corners = itertools.product(*[(s.start, s.stop - 1) for s in box])
    return origin + np.array(list(corners), dtype=np.float64) * spacing


def sub_volume_boxes(
    shape: Sequence[int],
    *,
    size: int | Sequence[int] = 300,
    per_axis: int | Sequence[int] = 2,
    within: Sequence[slice] | None = None,
) -> list[Box]:
    """Boxes of ``size`` (clipped to ``shape``) centred on a grid spread over the volume.

    Centres lie at fractions ``(i + 1/2) / per_axis`` of each axis, shifted inward
    so every box fits; duplicates (e.g. where the box spans the axis) are dropped.
    ``within`` (slices per axis) spreads them over that region only, e.g. the
    static material of the cell.
    """
    if within is not None:
        start = [r.indices(n)[0] for r, n in zip(within, shape, strict=True)]
        inner = [len(range(*r.indices(n))) for r, n in zip(within, shape, strict=True)]
        boxes = sub_volume_boxes(inner, size=size, per_axis=per_axis)
        return [
            tuple(slice(b.start + a, b.stop + a) for b, a in zip(box, start, strict=True)) for box in boxes
        ]
    size, per_axis = np.broadcast_to(size, 3), np.broadcast_to(per_axis, 3)
    starts = []
    for n, s, k in zip(shape, size, per_axis, strict=True):
        s = min(int(s), n)
        centres = (np.arange(k) + 0.5) / k * n
        starts.append(sorted({int(np.clip(round(c - s / 2), 0, n - s)) for c in centres}))
    sizes = [min(int(s), n) for s, n in zip(size, shape, strict=True)]
    grid = np.array(np.meshgrid(*starts, indexing="ij")).reshape(3, -1).T
    return [tuple(slice(int(a), int(a) + s) for a, s in zip(corner, sizes, strict=True)) for corner in grid]


def _series(data: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The intensity array, carrying its dataset's attributes (where ``voxel_size_um`` lives)."""
    if isinstance(data, xr.Dataset):
        return data["intensity"].assign_attrs({**data.attrs, **data["intensity"].attrs})
    return data


def check_voxel_size(intensity: xr.DataArray, voxel_size_um: float | None = None) -> float:
    """The one voxel size (µm) of ``intensity``, checked against its coordinates and per-time attrs.

    Raises
    ------
    VoxelSizeError
        No ``voxel_size_um`` attribute (and none given), per-time voxel sizes that
        differ, or a coordinate spacing that disagrees.
    """
    name = intensity.name or "intensity"
    size = intensity.attrs.get("voxel_size_um") if voxel_size_um is None else voxel_size_um
    if size is None or np.ndim(size) != 0 or not float(size) > 0:
        raise VoxelSizeError(name, f"needs one positive voxel_size_um attribute, got {size!r}")
    size = float(size)
    per_time = intensity.attrs.get("voxel_size_um_per_time")
    if per_time is not None:
        values = np.asarray(list(per_time.values()) if isinstance(per_time, Mapping) else per_time, float)
        if not np.allclose(values, size, rtol=1e-6):
            raise VoxelSizeError(name, f"timesteps have voxel sizes {sorted(set(values.tolist()))} µm")
    for dim in AXES:
        step = np.diff(np.asarray(intensity[dim].values, dtype=np.float64))
        if step.size and not np.allclose(step, size, rtol=1e-4):
            raise VoxelSizeError(
                name, f"coordinate {dim} has spacing {step.min():g}-{step.max():g} µm, not {size:g} µm"
            )
    return size


def estimate_transforms(
    intensity: xr.DataArray | xr.Dataset,
    *,
    reference: int = -1,
    voxel_size_um: float | None = None,
    mode: Literal["sub_volumes", "downsampled"] = "sub_volumes",
    sub_volume_size: int | Sequence[int] = 300,
    sub_volumes: int | Sequence[int] = 2,
    shrink: int = 4,
    refine: bool = True,
    options: RegistrationOptions | None = None,
    on_failure: Literal["raise", "report"] = "raise",
    static_region: str | None = None,
    client: object | None = None,
) -> xr.Dataset:
    """Estimate the rigid transform of every timestep relative to ``reference``.

    Parameters
    ----------
    intensity : xarray.DataArray of shape (T, Z, Y, X), or a Dataset holding ``intensity``
        Lazy (dask) CT time series with coordinates in µm; only boxes are read.
        Its (or its dataset's) attributes give ``voxel_size_um``.
    reference : int, keyword-only
        Index of the fixed timestep, in [-T, T).
    voxel_size_um : float, optional, keyword-only
        Default: the ``voxel_size_um`` attribute; checked against the coordinates.
    mode : {"sub_volumes", "downsampled"}, keyword-only
        Register boxes at full resolution, or the ``shrink``-fold block-mean volumes.
    sub_volume_size, sub_volumes : int or sequence of 3 int, keyword-only
        Box edge (voxels) and boxes per axis (see :func:`sub_volume_boxes`).
    shrink : int, keyword-only
        Block-mean factor of ``mode="downsampled"``.
    refine : bool, keyword-only
        After ``mode="downsampled"``, refine on the full-resolution boxes.
    options : RegistrationOptions, optional, keyword-only
    on_failure : {"raise", "report"}, keyword-only
        Raise :class:`RegistrationError` for a timestep that did not converge, or
        mark it ``converged=False`` (the resampler then refuses to apply it).
    static_region : str, optional, keyword-only
        Place the sub-volumes in this region only (voxels, crop syntax such as
        ``"z=0:120"``): material that does not change during the experiment, as
        the paper did; default the whole volume.
    client : distributed.Client, optional, keyword-only
        Compute on its cluster; default: dask's current scheduler.

    Returns
    -------
    xarray.Dataset
        ``angles_deg`` and ``translation_um`` (time, axis), ``centre_um`` (axis),
        ``metric`` (SimpleITK's, minus the correlation), ``converged``,
        ``iterations`` and ``disagreement_voxels`` (time: see
        :class:`RegistrationOptions`); the reference row is the identity.
    """
    from operando.analysis.ct.coarse import as_initial, coarse_fit  # late: coarse uses _register_box

    intensity = _series(intensity)
    n_time = intensity.sizes["time"]
    if not -n_time <= reference < n_time:
        raise ReferenceIndexError("reference", f"index {reference} is outside a series of {n_time} timesteps")
    ref = reference % n_time
    spacing = check_voxel_size(intensity, voxel_size_um)
    opts = options or RegistrationOptions()
    origin = np.array([float(intensity[d][0]) for d in AXES])
    shape = tuple(intensity.sizes[d] for d in AXES)
    centre = origin + (np.array(shape) - 1) / 2 * spacing
    threads = max(1, (os.cpu_count() or 1) // max(1, min(n_time - 1, os.cpu_count() or 1)))
    within = None
    if static_region:
        from operando.analysis.ct.regions import parse_crop

        crop = parse_crop(static_region, dict(zip(AXES, shape, strict=True)))
        within = [crop.get(d, slice(None)) for d in AXES]
    boxes = sub_volume_boxes(shape, size=sub_volume_size, per_axis=sub_volumes, within=within)
    grid = {"origin_um": origin, "spacing_um": spacing, "options": opts, "threads": threads}
    rows = {}
    for t in range(n_time):
        if t == ref:
            continue
        initial = (np.zeros(3), np.zeros(3), centre)
        if mode == "downsampled":
            rows[t] = coarse = coarse_fit(intensity, ref, t, shrink=shrink, **grid)
            if not refine:
                continue
            initial = dask.delayed(as_initial)(coarse)
        elif mode != "sub_volumes":
            raise ValueError(f"mode must be 'sub_volumes' or 'downsampled', got {mode!r}")
        fits = [
            dask.delayed(_register_box)(
                intensity.data[(ref, *box)],
                intensity.data[(t, *box)],
                origin + np.array([s.start for s in box]) * spacing,
                spacing,
                initial,
                opts,
                threads,
            )
            for box in boxes
        ]
        corners = [_corners_um(b, origin, spacing) for b in boxes]
        rows[t] = dask.delayed(_combine)(fits, corners, centre, opts.max_disagreement_voxels * spacing)
    computed = client.gather(client.compute(rows)) if client is not None else dask.compute(rows)[0]
    out = _to_dataset(intensity, computed, ref, centre, spacing, on_failure)
    out.attrs["voxel_size_um"] = spacing
    return out


def _to_dataset(
    intensity: xr.DataArray,
    fits: Mapping[int, _Fit],
    ref: int,
    centre: np.ndarray,
    spacing: float,
    on_failure: str,
) -> xr.Dataset:
    n_time = intensity.sizes["time"]
    angles, shifts = np.zeros((n_time, 3)), np.zeros((n_time, 3))
    metric, iters = np.full(n_time, np.nan), np.zeros(n_time, dtype=np.int64)
    converged, disagreement = np.ones(n_time, dtype=bool), np.zeros(n_time)
    for t, fit in fits.items():
        angles[t], shifts[t] = fit.angles_deg, _recentre(fit, centre)
        metric[t], iters[t], converged[t] = fit.metric, fit.iterations, fit.converged
        disagreement[t] = fit.disagreement_um / spacing
    failed = [t for t in range(n_time) if not converged[t]]
    if failed and on_failure != "report":
        first = failed[0]
        raise RegistrationError(
            f"timestep {first}",
            f"registration to timestep {ref} did not converge (metric {metric[first]:.3g}, "
            f"sub-volumes disagree by {disagreement[first]:.2f} voxel; failed timesteps: {failed}); "
            "place the sub-volumes on material that does not change (static_region=, "
            "--static-region) or use larger ones",
        )
    um = {"units": "µm"}
    return xr.Dataset(
        {
            "angles_deg": (
                ("time", "axis"),
                angles,
                {"units": "degree", "long_name": "rotation about z, y, x"},
            ),
            "translation_um": (("time", "axis"), shifts, {**um, "long_name": "translation along z, y, x"}),
            "centre_um": ("axis", centre, {**um, "long_name": "rotation centre"}),
            "metric": ("time", metric, {"long_name": "final metric (minus the correlation)"}),
            "converged": ("time", converged),
            "iterations": ("time", iters),
            "disagreement_voxels": (
                "time",
                disagreement,
                {"long_name": "largest distance between a sub-volume's transform and the fit, at its centre"},
            ),
        },
        coords={"time": intensity["time"].variable, "axis": list(AXES)},
        attrs={"reference_time_index": ref, "convention": "p = R(q - c) + c + s; q reference, p timestep"},
    )


def write_transforms_csv(transforms: xr.Dataset, path: str | Path) -> Path:
    """Write one row per timestep: angles, shifts, centre, metric and convergence."""
    columns = {"angle_{}_deg": "angles_deg", "shift_{}_um": "translation_um", "centre_{}_um": "centre_um"}
    table = {"time": np.arange(transforms.sizes["time"]), "time_min": transforms["time"].values}
    for pattern, name in columns.items():
        values = np.broadcast_to(transforms[name].values, (transforms.sizes["time"], len(AXES)))
        table.update({pattern.format(a): values[:, i] for i, a in enumerate(AXES)})
    table["metric"] = transforms["metric"].values
    table["converged"] = transforms["converged"].values
    pd.DataFrame(table).to_csv(path, index=False)
    return Path(path)
