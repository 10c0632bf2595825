"""Whole-image registration baselines for XANES stacks, to compare the per-particle method with.

Each baseline estimates one rigid translation per frame from image content, with
scikit-image doing the numerical work:

``template-abs``
    zero-mean normalized cross-correlation (:func:`skimage.feature.match_template`)
    of the reference frame, cropped by ``margin`` pixels on every side, inside each
    frame; the correlation peak is refined to sub-pixel precision by a parabola
    through the peak and its two neighbours along each axis. Normalized
    correlation ignores a gain and offset of the contrast, which is fair to the
    baseline across an absorption edge. Shifts beyond ``margin`` are not found.
``template-rel``
    the same, each frame against the previous one; the pairwise shifts are summed,
    so their errors accumulate like a random walk.
``phase``
    phase correlation (:func:`skimage.registration.phase_cross_correlation`),
    upsampled ``upsample`` times around the peak.
``sift``
    SIFT keypoints (:class:`skimage.feature.SIFT`) of both frames, matched by
    descriptor (:func:`skimage.feature.match_descriptors`, Lowe ratio 0.8) and
    fitted with a Euclidean transform by RANSAC (:func:`skimage.measure.ransac`);
    the shift is the fitted transform's displacement of the frame centre. Frames
    with fewer than three matches get NaN.
``optical-flow``
    TV-L1 optical flow (:func:`skimage.registration.optical_flow_tvl1`), averaged
    with the reference's gradient magnitude (:func:`skimage.filters.sobel`) as
    weights, since the flow is only informed where the image has edges.

Shifts are displacements of a frame's content relative to the reference frame,
(dy, dx) in pixels: ``frames[f]`` looks like the reference moved by
``shifts[f]``. :func:`apply_shifts` undoes them with :func:`scipy.ndimage.shift`.
Frames are read one or two at a time, so ``frames`` may be a dask or zarr array.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage
from skimage.feature import SIFT, match_descriptors, match_template
from skimage.filters import sobel
from skimage.measure import ransac
from skimage.registration import optical_flow_tvl1, phase_cross_correlation
from skimage.transform import EuclideanTransform

from operando.errors import ConfigError, ReferenceIndexError, ShapeMismatchError

__all__ = ["METHODS", "apply_shifts", "register_pair", "register_stack"]

_MIN_MATCHES = 3  # RANSAC of a 2-point Euclidean model needs a spare match to vote


def _template_shift(
    reference: np.ndarray, moving: np.ndarray, *, margin: int | None = None, **_: Any
) -> np.ndarray:
    m = margin if margin is not None else max(2, min(reference.shape) // 8)
    if not 0 < m < min(reference.shape) // 2:
        raise ConfigError(
            "margin",
            f"{m} px leaves no template in a {reference.shape} frame",
            remedy="Pass 0 < margin < Y/2, X/2.",
        )
    template = reference[m:-m, m:-m]
    score = match_template(moving, template)  # (2m+1, 2m+1): zero shift at (m, m)
    peak = np.array(np.unravel_index(np.argmax(score), score.shape))
    return peak + _parabola_offset(score, peak) - m


def _parabola_offset(score: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sub-pixel offset of a correlation peak: vertex of the 3-point parabola per axis."""
    offset = np.zeros(2)
    for axis in range(2):
        if 0 < peak[axis] < score.shape[axis] - 1:
            lo, hi = peak.copy(), peak.copy()
            lo[axis] -= 1
            hi[axis] += 1
            a, b, c = score[tuple(lo)], score[tuple(peak)], score[tuple(hi)]
            curvature = a - 2 * b + c
            offset[axis] = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
    return offset


def _phase_shift(reference: np.ndarray, moving: np.ndarray, *, upsample: int = 50, **_: Any) -> np.ndarray:
    # skimage returns the shift that registers ``moving`` onto ``reference``: the opposite of ours.
    shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=upsample)
    return -np.asarray(shift, dtype=np.float64)


def _sift_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    seed: int = 0,
    reference_features: tuple[np.ndarray, np.ndarray] | None = None,
    **_: Any,
) -> np.ndarray:
    ref_points, ref_desc = reference_features or _sift_features(reference)
    mov_points, mov_desc = _sift_features(moving)
    if len(ref_points) < _MIN_MATCHES or len(mov_points) < _MIN_MATCHES:
        return np.full(2, np.nan)
    pairs = match_descriptors(ref_desc, mov_desc, cross_check=True, max_ratio=0.8)
    if len(pairs) < _MIN_MATCHES:
        return np.full(2, np.nan)
    src, dst = ref_points[pairs[:, 0]], mov_points[pairs[:, 1]]
    with warnings.catch_warnings():  # no consensus is an answer here (NaN), not a warning
        warnings.filterwarnings("ignore", message="No inliers found")
        model, _ = ransac(
            (src, dst), EuclideanTransform, min_samples=2, residual_threshold=1.0, max_trials=200, rng=seed
        )
    if model is None:
        return np.full(2, np.nan)
    # Keypoints are (row, col); a rotation about the origin corner would leak into
    # the translation, so report the displacement of the frame centre instead.
    centre = (np.array(reference.shape, dtype=np.float64) - 1) / 2
    return model(centre[None])[0] - centre


def _sift_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel SIFT keypoints (K, 2) and descriptors (K, D); empty when none are found."""
    octaves = max(1, int(np.log2(min(image.shape))) - 2)  # the coarsest octave keeps ≥ 8 px
    sift = SIFT(n_octaves=octaves)
    try:
        sift.detect_and_extract(_unit_range(image))
    except RuntimeError:  # skimage raises when no keypoint survives
        return np.empty((0, 2)), np.empty((0, 128))
    return np.asarray(sift.positions, dtype=np.float64), sift.descriptors


def _unit_range(image: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]: SIFT's contrast threshold assumes that range."""
    lo, hi = np.min(image), np.max(image)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _flow_shift(reference: np.ndarray, moving: np.ndarray, **_: Any) -> np.ndarray:
    flow = optical_flow_tvl1(reference, moving)  # (2, Y, X): moving(p + flow) ≈ reference(p)
    weight = sobel(reference)
    if not np.any(weight > 0):
        return np.median(flow, axis=(1, 2)).astype(np.float64)
    return np.average(flow.reshape(2, -1), axis=1, weights=weight.ravel()).astype(np.float64)


_PAIRWISE: dict[str, Callable[..., np.ndarray]] = {
    "template-abs": _template_shift,
    "template-rel": _template_shift,
    "phase": _phase_shift,
    "sift": _sift_shift,
    "optical-flow": _flow_shift,
}
METHODS: tuple[str, ...] = tuple(_PAIRWISE)


def register_pair(reference: np.ndarray, moving: np.ndarray, *, method: str, **options: Any) -> np.ndarray:
    """Shift (dy, dx) of ``moving`` relative to ``reference`` by one baseline ``method``.

    Parameters
    ----------
    reference, moving : ndarray of shape (Y, X)
    method : str
        One of :data:`METHODS` (``template-rel`` registers a pair like ``template-abs``).
    **options
        ``margin`` (template methods, px; default a eighth of the frame), ``upsample``
        (phase, default 50), ``seed`` (SIFT's RANSAC); options of other methods are ignored.

    Returns
    -------
    ndarray of shape (2,)
        float64 pixels; NaN where ``sift`` finds too few matches.
    """
    pairwise = _dispatch(method)
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != mov.shape:
        raise ShapeMismatchError(
            "moving", f"frames of shapes {ref.shape} and {mov.shape} are not one 2-D shape"
        )
    return pairwise(ref, mov, **options)


def register_stack(frames: Any, *, method: str, reference: int = 0, **options: Any) -> np.ndarray:
    """Shift of every frame relative to the ``reference`` frame by one baseline ``method``.

    Parameters
    ----------
    frames : array-like of shape (F, Y, X)
        One particle's ROI sequence or whole fields; numpy, dask or zarr (read
        frame by frame).
    method : {'template-abs', 'template-rel', 'phase', 'sift', 'optical-flow'}
    reference : int
        Index of the reference frame, in [-F, F).
    **options
        Passed to :func:`register_pair`.

    Returns
    -------
    ndarray of shape (F, 2)
        (dy, dx) float64 pixels: ``frames[f]`` is the reference moved by
        ``shifts[f]``; zero at the reference.

    Raises
    ------
    ConfigError
        ``method`` is not one of :data:`METHODS`.
    ShapeMismatchError, ReferenceIndexError
        ``frames`` is not 3-D, or ``reference`` lies outside it.
    """
    _dispatch(method)
    n = _frame_count(frames)
    ref = _reference_index(reference, n)
    if method == "template-rel":
        return _accumulate(frames, n, ref, **options)
    fixed = np.asarray(frames[ref], dtype=np.float64)
    if method == "sift":  # the reference's keypoints serve every frame
        options = {**options, "reference_features": _sift_features(fixed)}
    shifts = np.array([register_pair(fixed, frames[f], method=method, **options) for f in range(n)])
    shifts[ref] = 0.0
    return shifts.reshape(n, 2)


def _accumulate(frames: Any, n: int, ref: int, **options: Any) -> np.ndarray:
    """Sum the shifts of consecutive frames, then express them relative to frame ``ref``."""
    steps = [np.zeros(2)]
    steps += [register_pair(frames[f - 1], frames[f], method="template-rel", **options) for f in range(1, n)]
    path = np.cumsum(steps, axis=0)
    return path - path[ref]


def apply_shifts(frames: Any, shifts: np.ndarray, *, order: int = 3, mode: str = "nearest") -> Any:
    """Move every frame back by its shift, so that all look like the reference.

    Parameters
    ----------
    frames : ndarray or dask.array.Array of shape (F, Y, X)
    shifts : ndarray of shape (F, 2)
        As returned by :func:`register_stack`; frames with a non-finite shift come
        back all NaN.
    order, mode
        Spline order and border mode of :func:`scipy.ndimage.shift`.

    Returns
    -------
    ndarray or dask.array.Array of shape (F, Y, X)
        float64; lazy (one frame per block) when ``frames`` is a dask array.
    """
    n = _frame_count(frames)
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (n, 2):
        raise ShapeMismatchError(
            "shifts", f"shape {shifts.shape} does not match {n} frames; expected ({n}, 2)"
        )
    if isinstance(frames, da.Array):
        stack = frames.rechunk((1, -1, -1))
        return stack.map_blocks(_shift_block, shifts=shifts, order=order, mode=mode, dtype=np.float64)
    return np.stack([_unshift(np.asarray(frames[f]), shifts[f], order, mode) for f in range(n)])


def _shift_block(
    block: np.ndarray, *, shifts: np.ndarray, order: int, mode: str, block_info=None
) -> np.ndarray:
    first = block_info[0]["array-location"][0][0]
    return np.stack([_unshift(frame, shifts[first + i], order, mode) for i, frame in enumerate(block)])


def _unshift(frame: np.ndarray, shift: np.ndarray, order: int, mode: str) -> np.ndarray:
    if not np.all(np.isfinite(shift)):
        return np.full(frame.shape, np.nan)
    return ndimage.shift(frame.astype(np.float64), -shift, order=order, mode=mode)


def _dispatch(method: str) -> Callable[..., np.ndarray]:
    if method not in _PAIRWISE:
        raise ConfigError(
            "method", f"unknown registration baseline {method!r}", remedy=f"Use one of {', '.join(METHODS)}."
        )
    return _PAIRWISE[method]


def _frame_count(frames: Any) -> int:
    shape = tuple(np.shape(frames))
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeMismatchError("frames", f"shape {shape} is not (F, Y, X) with F, Y, X ≥ 1")
    return shape[0]


def _reference_index(reference: int, n: int) -> int:
    if not -n <= reference < n:
        raise ReferenceIndexError("reference", f"frame {reference} is outside a stack of {n} frames")
    return reference % n
