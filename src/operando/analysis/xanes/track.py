"""Follow particles through a stack of TXM-XANES frames.

Each particle keeps one fixed moment region: its detected outline, grown by
``mask_pad_px``, shifted with the particle. Per frame, all particles at once:

1. cut a window around each previous position (one gather for every particle);
2. subtract a background plane fitted to the window outside the region grown by
   the search distance (a second, 3-sigma clipped pass ignores neighbours);
3. label the pixels above 3 noise sigmas (one labelling pass for all windows);
   a window with one large-enough component is unambiguous; with several, the
   identity is kept by SSIM between the previous ROI and each candidate's ROI
   (nearest centre when none is similar enough), as in the paper;
4. place the fixed region on the chosen component and take the centre of mass
   (moments M00, M10, M01) of the weights inside it; repeat once with the region
   re-placed on that centre.

Why a fixed region: a per-frame threshold follows the contrast, which is low
below the edge, so the outline, and the centre with it, changed with energy.
Weights (``weighting``): ``"soft"`` (default) is the absorbance above the plane
divided by 3/4 of the region's mean and clipped to [0, 1], a sub-pixel soft edge
whose level follows the contrast, so the same contour is found at every energy
and chemical contrast inside the particle does not pull the centre (on the
phantom, 1 scan × 143 energies, 256²: see ``benchmarks/results/xanes.md``);
``"intensity"`` weights by the absorbance itself (noise-robust but pulled by
chemistry); ``"mask"`` is the paper's binary region (3 sigmas).

Frames are read chunk by chunk along the frame axis, never all at once.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from operando.analysis.xanes.align import roi_ssim
from operando.analysis.xanes.detect import Particles
from operando.errors import InputError, ShapeMismatchError

__all__ = ["track_particles"]

WEIGHTINGS = ("soft", "intensity", "mask")
_MIN_AREA_FRACTION = 0.3  # a candidate smaller than this share of the previous region is debris
_MERGE_AREA_FRACTION = 1.6  # a region this much larger than before has merged with a neighbour
_SOFT_FRACTION = 0.75  # soft-edge level, as a share of the region's mean excess
_RING_PX = 4  # background ring beyond the search distance
_PLANAR = np.array([np.zeros((3, 3)), ndimage.generate_binary_structure(2, 1), np.zeros((3, 3))], bool)


@dataclass(frozen=True)
class _Geometry:
    """Window layout and fixed moment regions, shared by every frame."""

    half: np.ndarray  # (2,) window half-size; windows are (2 half + 1) wide
    search: int
    region: np.ndarray  # (P, Hy + 2 search, Hx + 2 search) bool, centred on the window centre
    near: np.ndarray  # (P, Hy, Hx) bool: the region grown by the search distance
    basis: np.ndarray  # (3, Hy, Hx) float32: 1, y, x (scaled) for the background plane
    roi_half: np.ndarray  # (P, 2) half-size of each particle's SSIM ROI


@dataclass
class _State:
    """Running state of every particle."""

    centre: np.ndarray  # (P, 2)
    area: np.ndarray  # (P,) pixels above threshold in the previous frame
    lost: list[str]
    measured: np.ndarray  # (P,) bool: area holds a measured value
    previous: np.ndarray | None = None  # previous frame, for SSIM templates


def track_particles(
    frames: da.Array | np.ndarray,
    particles: Particles,
    *,
    search_px: int = 8,
    min_ssim: float = 0.2,
    weighting: str = "soft",
    time_min: np.ndarray | None = None,
    pixel_size_um: float | None = None,
    reference_particle: int | None = None,
    chunk_frames: int = 16,
    mask_pad_px: int = 4,
) -> xr.Dataset:
    """Track each detected particle through the frames.

    Parameters
    ----------
    frames : dask.array.Array or ndarray of shape (F, Y, X)
        Absorbance frames, scan-major; read one dask chunk (or ``chunk_frames``
        frames of an ndarray) at a time.
    particles : Particles
        Start positions (``centroid``) and outlines (``labels``).
    search_px : int, keyword-only
        Largest motion between frames.
    min_ssim : float
        When several candidates are in the search window and none is at least this
        similar to the previous ROI, the nearest is taken.
    weighting : {"soft", "intensity", "mask"}
        Centre-of-mass weights inside the particle's fixed outline (see the module
        docstring).
    time_min : ndarray of shape (F,), optional
        Acquisition time of each frame; adds per-minute velocities and accelerations.
    pixel_size_um : float, optional
        Adds µm versions of the pixel quantities.
    reference_particle : int, optional
        Adds ``relative_px``: the displacement relative to that particle.
    chunk_frames : int
        Frames per read for an in-memory stack.
    mask_pad_px : int
        Growth of the detected outline that makes the fixed moment region.

    Returns
    -------
    xarray.Dataset
        Over (particle, frame, axis): ``position_px``, ``displacement_px`` (from the
        first frame), ``velocity_px``, ``acceleration_px`` (per frame),
        ``nonrigid_px`` (displacement minus the common mode); ``common_mode_px``
        (frame, axis), the median displacement over particles; ``valid`` and
        ``ssim`` (particle, frame; SSIM to the previous ROI, computed only where
        several candidates competed, else NaN); ``lost_reason`` (particle, "" if
        tracked to the end). NaN where not valid.
    """
    _check(frames, particles, weighting, time_min, reference_particle)
    geometry = _geometry(particles, search_px, mask_pad_px)
    state = _State(
        centre=particles.centroid.astype(np.float64).copy(),
        area=_MIN_AREA_FRACTION * particles.area.astype(np.float64),  # until measured
        lost=[""] * len(particles),
        measured=np.zeros(len(particles), dtype=bool),
    )
    n_frames = frames.shape[0]
    position = np.full((len(particles), n_frames, 2), np.nan)
    ssim = np.full((len(particles), n_frames), np.nan)
    for start, block in _blocks(frames, chunk_frames):
        for i, frame in enumerate(np.asarray(block, dtype=np.float32)):
            ssim[:, start + i] = _step(frame, state, geometry, min_ssim, weighting)
            live = np.array([not reason for reason in state.lost])
            position[live, start + i] = state.centre[live]
    ssim[np.isnan(position[..., 0])] = np.nan
    return _dataset(position, ssim, state.lost, time_min, pixel_size_um, reference_particle)


def _check(frames, particles, weighting, time_min, reference_particle) -> None:
    if frames.ndim != 3:
        raise ShapeMismatchError("frames", f"shape {frames.shape} is not (F, Y, X)")
    if particles.labels.shape != frames.shape[1:]:
        raise ShapeMismatchError(
            "particles", f"labels of shape {particles.labels.shape} do not match frames {frames.shape[1:]}"
        )
    if weighting not in WEIGHTINGS:
        raise InputError("weighting", f"{weighting!r} is not one of {WEIGHTINGS}")
    if time_min is not None and np.shape(time_min) != (frames.shape[0],):
        raise ShapeMismatchError("time_min", f"shape {np.shape(time_min)} is not ({frames.shape[0]},)")
    if reference_particle is not None and not 0 <= reference_particle < len(particles):
        raise InputError("reference_particle", f"{reference_particle} is not in 0..{len(particles) - 1}")


def _blocks(frames: da.Array | np.ndarray, size: int):
    """Yield (first frame index, ndarray of frames) one chunk at a time."""
    n = len(frames)
    chunks = frames.chunks[0] if isinstance(frames, da.Array) else [size] * (n // size) + [n % size]
    bounds = [int(b) for b in np.cumsum((0, *chunks))]
    for a, b in itertools.pairwise(dict.fromkeys(bounds)):
        block = frames[a:b]
        yield a, block.compute() if isinstance(block, da.Array) else block


def _geometry(particles: Particles, search: int, pad: int) -> _Geometry:
    """Windows wide enough for every particle's grown outline, its motion and a background ring."""
    centre = np.round(particles.centroid).astype(int)
    lo, hi = particles.bbox[:, :2] - pad, particles.bbox[:, 2:] + pad
    half = np.maximum(centre - lo, hi - centre).max(axis=0) + search + _RING_PX
    shape = 2 * half + 1
    region = np.zeros((len(particles), *(shape + 2 * search)), dtype=bool)
    grow = ndimage.generate_binary_structure(2, 1)
    for p, (y0, x0, y1, x1) in enumerate(particles.bbox):
        outline = np.pad(particles.labels[y0:y1, x0:x1] == p + 1, pad)
        grown = ndimage.binary_dilation(outline, grow, iterations=pad) if pad else outline
        a = lo[p] - centre[p] + half + search
        region[p, a[0] : a[0] + grown.shape[0], a[1] : a[1] + grown.shape[1]] = grown
    inner = region[:, search : search + shape[0], search : search + shape[1]]
    near = ndimage.binary_dilation(inner, grow[None], iterations=search) if search else inner
    yy, xx = np.indices(shape, dtype=np.float64) / half[:, None, None] - 1
    roi_half = (particles.roi[:, 2:] - particles.roi[:, :2]) // 2
    return _Geometry(
        half, search, region, near, np.stack([np.ones_like(yy), yy, xx]).astype(np.float32), roi_half
    )


def _step(frame: np.ndarray, state: _State, geo: _Geometry, min_ssim: float, weighting: str) -> np.ndarray:
    """Move every live particle to its position in ``frame``; return the SSIM where it was needed."""
    origin, window, inside = _windows(frame, state.centre, geo.half)
    excess, sigma = _excess(window, inside & ~geo.near, geo.basis)
    above = (excess > 3 * sigma[:, None, None]) & inside
    labels, n = ndimage.label(above, structure=_PLANAR)
    area, centroid = _components(labels, n)
    at_edge = np.zeros(n + 1, dtype=bool)
    at_edge[labels[_frame_border(origin, labels.shape, frame.shape)]] = True
    chosen, ssim = _choose(frame, state, geo, origin, (area, centroid, at_edge[1:]), min_ssim)
    shift = np.zeros_like(origin)
    for p, label in chosen.items():
        shift[p] = np.round(centroid[label, 1:]).astype(int) - geo.half
        state.area[p] = area[label]
    live = np.array(sorted(chosen), dtype=int)
    state.previous = frame
    if live.size == 0:
        return ssim
    for _ in range(2):  # the region placed on the component, then on the centre it gives
        region = _placed(geo, live, shift[live])
        com = _com(_weights(excess[live], above[live], region, weighting))
        shift[live] = np.clip(np.round(np.nan_to_num(com) - geo.half).astype(int), -geo.search, geo.search)
    for p, centre in zip(live, origin[live] + com, strict=True):
        if np.isfinite(centre).all():
            state.centre[p] = centre
        else:
            state.lost[p] = "not found in the search window"
    state.measured[live] = True
    return ssim


def _windows(frame: np.ndarray, centre: np.ndarray, half: np.ndarray):
    """Window origins (P, 2), windows (P, Hy, Hx) around ``centre``, and which pixels are in the frame."""
    origin = np.round(centre).astype(int) - half
    iy = origin[:, :1] + np.arange(2 * half[0] + 1)
    ix = origin[:, 1:] + np.arange(2 * half[1] + 1)
    ny, nx = frame.shape
    inside = ((iy >= 0) & (iy < ny))[:, :, None] & ((ix >= 0) & (ix < nx))[:, None, :]
    window = frame[np.clip(iy, 0, ny - 1)[:, :, None], np.clip(ix, 0, nx - 1)[:, None, :]]
    return origin, window, inside


def _excess(window: np.ndarray, background: np.ndarray, basis: np.ndarray):
    """Absorbance above a background plane (P, Hy, Hx) and the noise sigma (P,) of each window."""
    # Least squares for all windows at once through their 3×3 normal equations;
    # the second pass drops background pixels beyond 3 sigmas (a neighbour's edge).
    n_p = len(window)
    flat_basis = basis.reshape(3, -1)
    pairs = (flat_basis[:, None] * flat_basis[None]).reshape(9, -1)
    values = window.reshape(n_p, -1)
    use = background.reshape(n_p, -1).astype(np.float32)
    for _ in range(2):  # einsum, not BLAS: tiny products, where BLAS threading only costs
        normal = np.einsum("pn,kn->pk", use, pairs).reshape(n_p, 3, 3).astype(np.float64)
        rhs = np.einsum("pn,kn->pk", use * values, flat_basis)
        coef = np.linalg.solve(normal + 1e-9 * np.eye(3), rhs[..., None])[..., 0].astype(np.float32)
        residual = values - np.einsum("pk,kn->pn", coef, flat_basis)
        sigma = np.sqrt(np.einsum("pn,pn->p", use, residual**2) / np.maximum(use.sum(axis=1), 1))
        use *= np.abs(residual) <= 3 * sigma[:, None]
    sigma = np.where(use.sum(axis=1) > 0, sigma, np.inf)
    return residual.reshape(window.shape), sigma


def _components(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Area (n,) and centroid (n, 3: window index, y, x) of components 1..n of a (P, Hy, Hx) labelling."""
    at = np.flatnonzero(labels)
    which = labels.ravel()[at] - 1
    area = np.bincount(which, minlength=n)
    coords = np.unravel_index(at, labels.shape)
    centroid = np.stack([np.bincount(which, c, minlength=n) for c in coords], axis=1)
    return area, centroid / np.maximum(area, 1)[:, None]


def _frame_border(
    origin: np.ndarray, shape: tuple[int, int, int], frame_shape: tuple[int, int]
) -> np.ndarray:
    """Window pixels (P, Hy, Hx) on the frame's outermost rows and columns."""
    iy = origin[:, :1] + np.arange(shape[1])
    ix = origin[:, 1:] + np.arange(shape[2])
    on_y, on_x = (iy == 0) | (iy == frame_shape[0] - 1), (ix == 0) | (ix == frame_shape[1] - 1)
    in_y, in_x = (iy >= 0) & (iy < frame_shape[0]), (ix >= 0) & (ix < frame_shape[1])
    return (on_y & in_y)[:, :, None] & in_x[:, None, :] | (on_x & in_x)[:, None, :] & in_y[:, :, None]


def _choose(frame, state, geo, origin, components, min_ssim):
    """The component each live particle continues with ({particle: label index}), and the SSIM used."""
    area, centroid, at_edge = components
    ssim = np.full(len(state.centre), np.nan)
    owner = np.round(centroid[:, 0]).astype(int)
    chosen: dict[int, int] = {}
    claimed: dict[tuple, int] = {}  # by global centroid: one object seen from two windows
    for p in (p for p, reason in enumerate(state.lost) if not reason):
        cands = np.flatnonzero((owner == p) & (area >= _MIN_AREA_FRACTION * state.area[p]))
        if cands.size == 0:
            state.lost[p] = "not found in the search window"
            continue
        best = 0
        if cands.size > 1:  # ambiguous: several objects in the search window
            best, ssim[p] = _identify(
                frame, state, geo.roi_half[p], p, origin[p] + centroid[cands, 1:], min_ssim
            )
        label = cands[best]
        if at_edge[label]:
            state.lost[p] = "left the field"
        elif state.measured[p] and area[label] > _MERGE_AREA_FRACTION * state.area[p]:
            state.lost[p] = "merged with another object"
        elif (key := tuple(np.round(origin[p] + centroid[label, 1:], 3))) in claimed:
            state.lost[p] = state.lost[claimed[key]] = "merged with another particle"
            chosen.pop(claimed[key], None)
        else:
            claimed[key], chosen[p] = p, label
    return chosen, ssim


def _identify(frame, state, half, p, centres, min_ssim) -> tuple[int, float]:
    """Index of the candidate most similar to the previous ROI (the nearest if none is similar)."""
    scores = np.full(len(centres), np.nan)
    if state.previous is not None:
        template = _cut(state.previous, state.centre[p], half)
        scores = np.array([roi_ssim(template, _cut(frame, c, half)) for c in centres])
    if np.nanmax(scores, initial=-1) >= min_ssim:
        best = int(np.nanargmax(scores))
        return best, float(scores[best])
    return int(np.argmin(np.hypot(*(centres - state.centre[p]).T))), np.nan


def _weights(excess: np.ndarray, above: np.ndarray, region: np.ndarray, weighting: str) -> np.ndarray:
    """Moment weights inside the placed regions, shape (P, Hy, Hx)."""
    if weighting == "mask":
        return (above & region).astype(np.float32)
    if weighting == "intensity":
        return np.clip(excess, 0, None) * region
    level = (excess * region).sum(axis=(1, 2)) / np.maximum(region.sum(axis=(1, 2)), 1)
    soft = np.clip(excess / (_SOFT_FRACTION * np.maximum(level, 1e-12))[:, None, None], 0, 1)
    return soft * region


def _placed(geo: _Geometry, live: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The fixed regions of particles ``live`` moved by integer ``shift`` (n, 2) inside their windows."""
    s = geo.search
    hy, hx = 2 * geo.half + 1
    return np.stack(
        [
            geo.region[p, s - ky : s - ky + hy, s - kx : s - kx + hx]
            for p, (ky, kx) in zip(live, shift, strict=True)
        ]
    )


def _com(weights: np.ndarray) -> np.ndarray:
    """Centre of mass (n, 2) of each weight image from the moments M00, M10, M01 (NaN if M00 is 0)."""
    m00 = weights.sum(axis=(1, 2))
    m10 = weights.sum(axis=2) @ np.arange(weights.shape[1])
    m01 = weights.sum(axis=1) @ np.arange(weights.shape[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([m10, m01], axis=1) / m00[:, None]


def _cut(frame: np.ndarray, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    """The (2·half + 1) ROI around ``centre`` (rounded), edge-padded where it leaves the frame."""
    lo = np.round(centre).astype(int) - half
    hi = lo + 2 * half + 1
    inside = frame[max(lo[0], 0) : hi[0], max(lo[1], 0) : hi[1]]
    before = np.maximum(-lo, 0)
    after = np.maximum(hi - frame.shape, 0)
    return np.pad(inside, list(zip(before, after, strict=True)), mode="edge")


def _dataset(position, ssim, lost, time_min, pixel_um, reference) -> xr.Dataset:
    """Derived motion quantities of the tracked positions."""
    valid = np.isfinite(position[..., 0])
    displacement = position - position[:, :1]
    with warnings.catch_warnings():  # frames where every particle is lost give NaN, as they should
        warnings.simplefilter("ignore", RuntimeWarning)
        common = np.nanmedian(np.where(valid[..., None], displacement, np.nan), axis=0)
    pfa = ("particle", "frame", "axis")
    data = {
        "position_px": (pfa, position),
        "displacement_px": (pfa, displacement),
        "velocity_px": (pfa, _gradient(position)),
        "acceleration_px": (pfa, _gradient(_gradient(position))),
        "common_mode_px": (("frame", "axis"), common),
        "nonrigid_px": (pfa, displacement - common),
        "valid": (("particle", "frame"), valid),
        "ssim": (("particle", "frame"), ssim),
        "lost_reason": ("particle", np.array(lost, dtype=object).astype(str)),
    }
    if reference is not None:
        data["relative_px"] = (pfa, displacement - displacement[reference])
    if time_min is not None:
        t = np.asarray(time_min, dtype=np.float64)
        data["velocity_px_per_min"] = (pfa, _gradient(position, t))
        data["acceleration_px_per_min2"] = (pfa, _gradient(_gradient(position, t), t))
    if pixel_um is not None:
        for name in [k for k in data if k.endswith(("_px", "_px_per_min", "_px_per_min2"))]:
            data[name.replace("_px", "_um")] = (data[name][0], data[name][1] * pixel_um)
    ds = xr.Dataset(data, coords={"particle": np.arange(len(position)), "axis": ["y", "x"]})
    return ds.assign_coords(time_min=("frame", time_min)) if time_min is not None else ds


def _gradient(values: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """Derivative along the frame axis (central differences; NaN next to lost frames)."""
    if values.shape[1] < 2:
        return np.full_like(values, np.nan)
    return np.gradient(values, axis=1) if t is None else np.gradient(values, t, axis=1)
