"""Cut each particle's ROI from every frame, centred on its centre of mass, and judge the result.

The ROI of particle p in frame f is resampled (sub-pixel, linear by default) so
that the tracked centre sits at the ROI centre; only the ROI region of each
frame is interpolated. Frames are processed one dask chunk at a time.
"""

from __future__ import annotations

import itertools

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.metrics import structural_similarity

from operando.errors import InputError, ShapeMismatchError

__all__ = ["align_rois", "alignment_error", "alignment_quality", "roi_ssim"]


def align_rois(
    stack: da.Array | np.ndarray, positions: np.ndarray, *, size: tuple[int, int], order: int = 1
) -> da.Array:
    """Aligned ROIs of every particle in every frame, lazily.

    Parameters
    ----------
    stack : dask.array.Array or ndarray of shape (F, Y, X)
        Frames; an ndarray is split into chunks of 8 frames.
    positions : ndarray of shape (P, F, 2)
        Centre (y, x) of each particle per frame in pixels (NaN: not tracked).
    size : (h, w), keyword-only
        ROI shape.
    order : int
        Spline order of the interpolation (0-5).

    Returns
    -------
    dask.array.Array of float32, shape (P, F, h, w)
        The centre of ROI ``[p, f]`` (pixel ``((h - 1) / 2, (w - 1) / 2)``) is
        ``positions[p, f]``; NaN where the position is NaN.
    """
    positions = np.asarray(positions, dtype=np.float64)
    stack = stack if isinstance(stack, da.Array) else da.from_array(stack, chunks=(8, -1, -1))
    if stack.ndim != 3 or positions.ndim != 3 or positions.shape[1:] != (stack.shape[0], 2):
        raise ShapeMismatchError(
            "positions", f"shape {positions.shape} is not (P, F, 2) for frames of shape {stack.shape}"
        )
    h, w = (int(n) for n in size)
    if h < 1 or w < 1 or not 0 <= order <= 5:
        raise InputError("size", f"ROI size {size} or order {order} is invalid (size ≥ 1, order 0-5)")
    bounds = np.cumsum((0, *stack.chunks[0]))
    parts = [
        da.from_delayed(
            dask.delayed(_align_block)(stack[a:b], positions[:, a:b], (h, w), order),
            shape=(len(positions), b - a, h, w),
            dtype=np.float32,
        )
        for a, b in itertools.pairwise(bounds)
    ]
    return da.concatenate(parts, axis=1)


def _align_block(frames: np.ndarray, positions: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    out = np.full((len(positions), len(frames), *size), np.nan, dtype=np.float32)
    for f, frame in enumerate(frames):
        for p, centre in enumerate(positions[:, f]):
            if np.all(np.isfinite(centre)):
                out[p, f] = _resample(frame, centre, size, order)
    return out


def _resample(frame: np.ndarray, centre: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Interpolate the ROI of ``size`` centred on ``centre`` from a padded cut-out of ``frame``."""
    half = (np.array(size) - 1) / 2
    pad = order + 2
    lo = np.floor(centre - half).astype(int) - pad
    hi = np.ceil(centre + half).astype(int) + pad + 1
    region = frame[max(lo[0], 0) : hi[0], max(lo[1], 0) : hi[1]]
    region = np.pad(
        region, list(zip(np.maximum(-lo, 0), np.maximum(hi - frame.shape, 0), strict=True)), mode="edge"
    )
    start = centre - half - lo
    if order == 1:
        return _bilinear(region, start, size)
    grid = np.indices(size, dtype=np.float64) + start[:, None, None]
    return ndimage.map_coordinates(region.astype(np.float64), grid, order=order, mode="nearest")


def _bilinear(region: np.ndarray, start: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Linear interpolation on a grid shifted by a constant: four weighted integer cut-outs."""
    # The same values as map_coordinates(order=1), without per-pixel coordinates.
    (y0, x0), (fy, fx) = np.floor(start).astype(int), start - np.floor(start)
    h, w = size
    cut = region[y0 : y0 + h + 1, x0 : x0 + w + 1].astype(np.float32)
    rows = (1 - fy) * cut[:-1] + fy * cut[1:]
    return (1 - fx) * rows[:, :-1] + fx * rows[:, 1:]


def alignment_quality(aligned: da.Array | np.ndarray) -> xr.Dataset:
    """Quality of aligned ROIs: differential map and SSIM between adjacent frames.

    Parameters
    ----------
    aligned : array of shape (P, F, h, w)
        :func:`align_rois` output (computed here, one particle at a time).

    Returns
    -------
    xarray.Dataset
        ``differential`` (particle, y, x): last minus first valid frame;
        ``ssim_mean``, ``ssim_var`` (particle): SSIM between adjacent valid frames.
    """
    diffs, means, variances = [], [], []
    for p in range(aligned.shape[0]):
        rois = np.asarray(aligned[p], dtype=np.float64)
        rois = rois[np.isfinite(rois).all(axis=(1, 2))]
        scores = np.array([roi_ssim(a, b) for a, b in itertools.pairwise(rois)])
        diffs.append(rois[-1] - rois[0] if len(rois) else np.full(aligned.shape[2:], np.nan))
        means.append(scores.mean() if scores.size else np.nan)
        variances.append(scores.var() if scores.size else np.nan)
    return xr.Dataset(
        {
            "differential": (("particle", "y", "x"), np.stack(diffs)),
            "ssim_mean": ("particle", np.array(means)),
            "ssim_var": ("particle", np.array(variances)),
        },
        coords={"particle": np.arange(aligned.shape[0])},
    )


def roi_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ROIs (Y, X) over their joint value range, with a window that fits small ROIs."""
    span = float(max(np.ptp(a), np.ptp(b))) or 1.0
    side = min(7, *a.shape)  # SSIM's 7-px window cannot exceed a small ROI
    return float(structural_similarity(a, b, data_range=span, win_size=side - (side + 1) % 2))


def alignment_error(positions: np.ndarray, truth_positions: np.ndarray) -> float:
    """RMS error (px) of tracked motion against the true motion, each particle's constant offset removed.

    Parameters
    ----------
    positions, truth_positions : ndarray of shape (P, F, 2)
        Measured and true centres. A centre of mass and the true centroid differ by
        a constant per particle; that offset (the mean difference over the frames)
        is removed, so no frame is special: measuring from frame 0 instead would add
        frame 0's own error to every other frame. NaN entries (lost frames) are ignored.
    """
    est = np.asarray(positions, dtype=np.float64)
    true = np.asarray(truth_positions, dtype=np.float64)
    if est.shape != true.shape or est.ndim != 3:
        raise ShapeMismatchError("truth_positions", f"shape {true.shape} differs from positions {est.shape}")
    err = est - true
    err = err - np.nanmean(err, axis=1, keepdims=True)
    return float(np.sqrt(np.nanmean(err**2)))
