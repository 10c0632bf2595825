"""Detect isolated particles in a TXM-XANES reference image.

Steps: a robust reference image (the mean of post-edge absorbance frames), a
smooth background removed by normalized convolution over the pixels Otsu calls
background, a noise-based threshold (at most Otsu's), watershed on the distance
transform to split touching blobs, then filters: debris smaller than ``min_size_px``, objects
larger than ``max_size_px``, objects touching the field edge or another object
(only isolated particles are kept) and, when an edge-jump image is given,
objects without a Ni K-edge (the debris of the phantom and of the paper). Each
kept particle's pixels are then its Otsu core, without the blurred rim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from scipy import ndimage, stats
from skimage import filters, measure, morphology, segmentation

from operando.errors import EnergyListError, NoParticlesError, ParticleSizeError, ShapeMismatchError

__all__ = [
    "Particles",
    "detect_particles",
    "edge_jump_image",
    "reference_image",
]

PRE_EDGE_EV = 8335.0  # below the Ni K-edge of NMC/NCA (8345-8350 eV)
POST_EDGE_EV = 8360.0  # above the white line's rise


@dataclass(frozen=True)
class Particles:
    """Isolated particles found in a reference image.

    Attributes
    ----------
    labels : ndarray of int32, shape (Y, X)
        0 background, p + 1 for particle p (rejected objects are 0).
    centroid : ndarray of float64, shape (P, 2)
        Area centroid (y, x) in pixels.
    bbox, roi : ndarray of int64, shape (P, 4)
        ``(y0, x0, y1, x1)`` half-open boxes: the particle's bounding box, and the
        bounding box grown by the margin and clipped to the frame.
    area : ndarray of int64, shape (P,)
        Pixels per particle.
    rejected : dict of str to int
        Objects rejected, per reason.
    """

    labels: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    roi: np.ndarray
    rejected: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.area)


def reference_image(
    absorbance: da.Array, energies: np.ndarray, *, scan: int = 0, post_edge_ev: float = POST_EDGE_EV
) -> da.Array:
    """Mean of one scan's post-edge absorbance frames, lazily (only those frames are read).

    Parameters
    ----------
    absorbance : dask.array.Array of shape (S, E, Y, X)
    energies : ndarray of shape (E,)
        Energies in eV.
    scan : int, keyword-only
    post_edge_ev : float
        Frames at or above this energy count as post-edge.

    Returns
    -------
    dask.array.Array of float32, shape (Y, X)
    """
    picked = _energy_index(absorbance, energies, post_edge_ev, above=True)
    return absorbance[scan][picked].mean(axis=0, dtype=np.float32)


def edge_jump_image(
    absorbance: da.Array,
    energies: np.ndarray,
    *,
    scan: int = 0,
    pre_edge_ev: float = PRE_EDGE_EV,
    post_edge_ev: float = POST_EDGE_EV,
) -> da.Array:
    """Post-edge minus pre-edge mean absorbance of one scan, lazily, shape (Y, X)."""
    pre = _energy_index(absorbance, energies, pre_edge_ev, above=False)
    return reference_image(absorbance, energies, scan=scan, post_edge_ev=post_edge_ev) - absorbance[scan][
        pre
    ].mean(axis=0, dtype=np.float32)


def _energy_index(absorbance: da.Array, energies: np.ndarray, limit: float, *, above: bool) -> np.ndarray:
    energies = np.asarray(energies, dtype=np.float64)
    if absorbance.ndim != 4 or absorbance.shape[1] != energies.size:
        raise ShapeMismatchError(
            "absorbance",
            f"shape {absorbance.shape} is not (S, E, Y, X) with E = {energies.size} energies",
        )
    picked = np.flatnonzero(energies >= limit if above else energies <= limit)
    if picked.size == 0:
        side = "at or above" if above else "at or below"
        raise EnergyListError(
            "energies",
            f"no energy {side} {limit} eV (range {energies.min()}-{energies.max()} eV)",
            remedy="Pass post_edge_ev / pre_edge_ev inside the scanned range.",
        )
    return picked


def detect_particles(
    reference: np.ndarray,
    *,
    edge_jump: np.ndarray | None = None,
    min_jump_fraction: float = 0.3,
    min_size_px: int | None = None,
    max_size_px: int | None = None,
    min_size_fraction: float = 0.02,
    margin_px: int = 8,
    background_px: float | None = None,
    noise_sigmas: float = 4.0,
    split_neck_ratio: float = 0.8,
    split_depth_px: float = 2.0,
) -> Particles:
    """Find isolated particles in a reference absorbance image.

    Parameters
    ----------
    reference : array-like of shape (Y, X)
        E.g. :func:`reference_image`; computed if lazy.
    edge_jump : array-like of shape (Y, X), optional
        :func:`edge_jump_image`. When given, objects whose mean edge jump is below
        ``min_jump_fraction`` of their mean reference absorbance (both with the
        background removed) are rejected as debris: they hold no Ni.
    min_jump_fraction : float
        0.3 by default: Ni particles jump by ~0.8 of their post-edge absorbance,
        Ni-free debris by ~0 (a smooth photoabsorption slope).
    min_size_px : int, optional
        Smaller objects are debris. Default ``min_size_fraction`` of the typical
        particle area (at least 16 px).
    max_size_px : int, optional
        Larger objects are rejected (default: no limit).
    min_size_fraction : float
        Typical area = the area-weighted median object area (the area of the object
        holding the median foreground pixel), so many specks do not lower it.
    margin_px : int
        ROI margin around each bounding box.
    background_px : float, optional
        Gaussian scale of the smooth background (default: an eighth of the field).
    noise_sigmas : float
        Foreground = above the background by this many robust noise sigmas (or above
        Otsu's threshold, whichever is lower): Otsu alone, pulled up by the bright
        large particles, cuts dim small ones into specks.
    split_neck_ratio : float
        A touching blob is split where its neck's half-width is below this fraction of
        the smaller part's inscribed radius (both plus ``split_depth_px``), so rough
        outlines of large particles do not seed spurious objects.
    split_depth_px : float
        Offset (px) of the neck test: small maxima need a neck deeper than this.

    Returns
    -------
    Particles

    Raises
    ------
    NoParticlesError
        If no isolated particle remains.
    ParticleSizeError
        If an object spans the whole field, or a ROI with its margin cannot fit.
    """
    image = np.asarray(reference, dtype=np.float64)
    if image.ndim != 2:
        raise ShapeMismatchError("reference", f"shape {image.shape} is not (Y, X)")
    flat = _remove_background(image, background_px or max(image.shape) / 8)
    labels = _split(_foreground(flat, noise_sigmas), split_neck_ratio, split_depth_px)
    typical = _typical_area(labels)
    min_size = int(min_size_px if min_size_px is not None else max(16, min_size_fraction * typical))
    jump = (
        None
        if edge_jump is None
        else _remove_background(np.asarray(edge_jump, np.float64), max(image.shape) / 8)
    )
    keep, rejected = _filter(labels, flat, jump, min_size, max_size_px, min_jump_fraction, margin_px)
    if not keep:
        raise NoParticlesError("reference", f"no isolated particle found (rejected: {rejected or 'nothing'})")
    return _particles(_core(labels, keep, flat), keep, margin_px, rejected)


def _remove_background(image: np.ndarray, sigma: float) -> np.ndarray:
    """Subtract a smooth background fitted to the pixels Otsu calls background."""
    # Normalized convolution: the Gaussian mean of background pixels only, so
    # bright particles do not lift the background around them.
    weight = (image <= filters.threshold_otsu(image)).astype(np.float64)
    num = ndimage.gaussian_filter(image * weight, sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest")
    return image - num / np.maximum(den, 1e-6)


def _foreground(flat: np.ndarray, sigmas: float) -> np.ndarray:
    """Pixels above the background by ``sigmas`` robust noise sigmas (at most Otsu's threshold).

    Below a quarter of the background-to-Otsu step is never foreground.
    """
    # Light smoothing so the noise-based threshold does not fray particle outlines.
    smooth = ndimage.gaussian_filter(flat, 1.0)
    otsu = filters.threshold_otsu(smooth)
    background = smooth[smooth <= otsu]
    centre = np.median(background)
    noise = stats.median_abs_deviation(background, scale="normal")
    # The floor keeps noise-free images from thresholding at the background itself.
    return smooth > min(otsu, centre + max(sigmas * noise, (otsu - centre) / 4))


def _split(mask: np.ndarray, ratio: float, depth: float) -> np.ndarray:
    """Label the mask, splitting touching blobs by watershed on the distance transform."""
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, morphology.disk(1)))
    distance = ndimage.distance_transform_edt(mask)
    # h-maxima of log(distance + depth): a seed per blob whose neck (saddle s below
    # peak p) satisfies s + depth < ratio (p + depth), a neck deep relative to its size.
    log_distance = np.log(distance + depth)
    # Regional maxima of the h-reconstruction, not skimage's h_maxima: that keeps
    # both summits of equal-height twins, splitting two halves of one blob.
    flooded = morphology.reconstruction(log_distance + np.log(ratio), log_distance)
    markers = measure.label(morphology.local_maxima(flooded) & mask)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    # Blobs too thin to hold a seed (debris) stay objects of their own.
    lone = measure.label(mask & (labels == 0))
    return np.where(lone > 0, lone + labels.max(), labels)


def _core(labels: np.ndarray, keep: list[int], flat: np.ndarray) -> np.ndarray:
    """Restrict each kept object to its pixels above Otsu's threshold (the whole object if none).

    The low threshold finds and splits dim particles but takes in their blurred rim,
    whose partial-volume signal would bias per-particle spectra.
    """
    core = ndimage.binary_fill_holes(
        ndimage.binary_opening(flat > filters.threshold_otsu(flat), morphology.disk(1))
    )
    has_core = np.bincount(labels[core], minlength=labels.max() + 1) > 0
    has_core[0] = False
    trim = np.isin(labels, keep) & has_core[labels] & ~core
    return np.where(trim, 0, labels)


def _typical_area(labels: np.ndarray) -> float:
    """Area-weighted median object area: the area of the object holding the median foreground pixel."""
    areas = np.bincount(labels.ravel())[1:]
    areas = np.sort(areas[areas > 0])
    if areas.size == 0:
        return 0.0
    cumulative = np.cumsum(areas)
    return float(areas[np.searchsorted(cumulative, cumulative[-1] / 2)])


def _filter(
    labels: np.ndarray,
    flat: np.ndarray,
    jump: np.ndarray | None,
    min_size: int,
    max_size: int | None,
    min_fraction: float,
    margin: int,
) -> tuple[list[int], dict[str, int]]:
    """Labels of isolated particles, and the count of rejected objects per reason."""
    ny, nx = labels.shape
    # Specks along a frayed outline do not make a particle "touching": only
    # neighbours of at least ``min_size`` count.
    solid = np.where(np.bincount(labels.ravel())[labels] >= min_size, labels, 0)
    grown = ndimage.grey_dilation(solid, size=3)
    shrunk = -ndimage.grey_dilation(-np.where(solid > 0, solid, labels.max() + 1), size=3)
    keep, rejected = [], {}
    for region in measure.regionprops(labels, intensity_image=flat):
        y0, x0, y1, x1 = region.bbox
        h, w = y1 - y0, x1 - x0
        if (h >= ny or w >= nx or h + 2 * margin > ny or w + 2 * margin > nx) and (
            max_size is None or region.area <= max_size
        ):
            raise ParticleSizeError(
                "reference", f"object of {h}×{w} px with a {margin} px margin cannot fit the {ny}×{nx} frame"
            )
        box = region.slice
        inside = labels[box] == region.label
        touches = np.any((grown[box][inside] != region.label) | (shrunk[box][inside] != region.label))
        reason = (
            "debris (too small)"
            if region.area < min_size
            else "too large"
            if max_size is not None and region.area > max_size
            else "touches the field edge"
            if y0 == 0 or x0 == 0 or y1 == ny or x1 == nx
            else "touches another object"
            if touches
            else "no Ni edge"
            if jump is not None and jump[box][inside].mean() < min_fraction * region.intensity_mean
            else None
        )
        if reason is None:
            keep.append(region.label)
        else:
            rejected[reason] = rejected.get(reason, 0) + 1
    return keep, rejected


def _particles(labels: np.ndarray, keep: list[int], margin: int, rejected: dict[str, int]) -> Particles:
    relabel = np.zeros(labels.max() + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    out = relabel[labels]
    props = measure.regionprops(out)
    bbox = np.array([p.bbox for p in props], dtype=np.int64)
    shape = np.array(out.shape * 2)
    roi = np.clip(bbox + np.array([-margin, -margin, margin, margin]), 0, shape)
    return Particles(
        labels=out,
        centroid=np.array([p.centroid for p in props], dtype=np.float64),
        bbox=bbox,
        area=np.array([p.area for p in props], dtype=np.int64),
        roi=roi,
        rejected=rejected,
    )
