"""Detect isolated particles in a TXM-XANES reference image.

Steps: a robust reference image (the mean of post-edge absorbance frames), a
smooth background removed by normalized convolution over the pixels Otsu calls
background, an Otsu threshold, watershed on the distance transform to split
touching blobs, then filters: debris smaller than ``min_size_px``, objects
larger than ``max_size_px``, objects touching the field edge or another object
(only isolated particles are kept) and, when an edge-jump image is given,
objects without a Ni K-edge (the debris of the phantom and of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from scipy import ndimage
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
    margin_px: int = 8,
    background_px: float | None = None,
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
        Smaller objects are debris. Default 0.2 % of the field (131 px for 256²).
    max_size_px : int, optional
        Larger objects are rejected (default: no limit).
    margin_px : int
        ROI margin around each bounding box.
    background_px : float, optional
        Gaussian scale of the smooth background (default: an eighth of the field).
    split_depth_px : float
        Distance-transform maxima shallower than this do not seed a new object.

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
    min_size = int(min_size_px if min_size_px is not None else max(16, 2e-3 * image.size))
    flat = _remove_background(image, background_px or max(image.shape) / 8)
    labels = _split(flat > filters.threshold_otsu(flat), split_depth_px)
    jump = (
        None
        if edge_jump is None
        else _remove_background(np.asarray(edge_jump, np.float64), max(image.shape) / 8)
    )
    keep, rejected = _filter(labels, flat, jump, min_size, max_size_px, min_jump_fraction, margin_px)
    if not keep:
        raise NoParticlesError("reference", f"no isolated particle found (rejected: {rejected or 'nothing'})")
    return _particles(labels, keep, margin_px, rejected)


def _remove_background(image: np.ndarray, sigma: float) -> np.ndarray:
    """Subtract a smooth background fitted to the pixels Otsu calls background."""
    # Normalized convolution: the Gaussian mean of background pixels only, so
    # bright particles do not lift the background around them.
    weight = (image <= filters.threshold_otsu(image)).astype(np.float64)
    num = ndimage.gaussian_filter(image * weight, sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest")
    return image - num / np.maximum(den, 1e-6)


def _split(mask: np.ndarray, depth: float) -> np.ndarray:
    """Label the mask, splitting touching blobs by watershed on the distance transform."""
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, morphology.disk(1)))
    distance = ndimage.distance_transform_edt(mask)
    # h-maxima: one seed per blob whose centre stands ``depth`` above its neck.
    markers = measure.label(morphology.h_maxima(distance, depth).astype(bool) & mask)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    # Blobs too thin to hold a seed (debris) stay objects of their own.
    lone = measure.label(mask & (labels == 0))
    return np.where(lone > 0, lone + labels.max(), labels)


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
    grown = ndimage.grey_dilation(labels, size=3)
    shrunk = -ndimage.grey_dilation(-np.where(labels > 0, labels, labels.max() + 1), size=3)
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
