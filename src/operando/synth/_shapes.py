"""Analytic geometry shared by the phantoms: smooth random fields, blob outlines, rotations.

Everything here is a closed-form function of global coordinates, so that any
block of a phantom can be rendered alone and gives the same numbers as any other
chunking would (:func:`lattice_noise` hashes global lattice indices, see :mod:`._rng`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operando.synth import _rng

__all__ = ["FourierField", "blob_outline", "lattice_noise", "random_field", "rotation_matrix"]


@dataclass(frozen=True)
class FourierField:
    """A smooth random 2D field: a sum of plane waves ``Σ a·cos(k·(y, x) + φ)``.

    Attributes
    ----------
    wavevectors : ndarray of shape (K, 2)
        Angular wavevectors (ky, kx) in rad per pixel.
    phases, amplitudes : ndarray of shape (K,)
    """

    wavevectors: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Evaluate at broadcastable coordinate arrays ``y`` and ``x`` (pixels)."""
        out = np.zeros(np.broadcast_shapes(np.shape(y), np.shape(x)))
        # One mode at a time keeps the summation order fixed, so a point gets the
        # same float value whatever array it is evaluated in.
        for (ky, kx), phase, amp in zip(self.wavevectors, self.phases, self.amplitudes, strict=True):
            out += amp * np.cos(ky * y + kx * x + phase)
        return out

    def on_grid(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Bilinear interpolant of the field sampled on the integer pixel grid.

        This is the field's definition wherever it is used at non-integer points:
        it costs one field evaluation per grid node of the bounding box instead of
        one per point, and equals the field exactly at integer points.
        """
        y0, x0 = int(np.floor(np.min(y))), int(np.floor(np.min(x)))
        y1, x1 = int(np.floor(np.max(y))) + 2, int(np.floor(np.max(x))) + 2
        grid = self(
            np.arange(y0, y1, dtype=np.float64)[:, None], np.arange(x0, x1, dtype=np.float64)[None, :]
        )
        return bilinear(grid, (y0, x0), y, x)


def bilinear(grid: np.ndarray, origin: tuple[int, int], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``grid`` (..., H, W), whose node [0, 0] is at ``origin``.

    ``y`` and ``x`` broadcast against each other; leading axes of ``grid`` (several
    fields on one grid) lead the result.
    """
    # Weights from the absolute coordinates, never from (y - origin): the result
    # must not depend on which grid box a block happened to evaluate.
    fy, fx = np.floor(y), np.floor(x)
    iy = fy.astype(np.intp) - origin[0]
    ix = fx.astype(np.intp) - origin[1]
    fy, fx = y - fy, x - fx
    top = grid[..., iy, ix] * (1 - fx) + grid[..., iy, ix + 1] * fx
    bottom = grid[..., iy + 1, ix] * (1 - fx) + grid[..., iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def random_field(rng: np.random.Generator, *, length: float, rms: float, n_modes: int = 24) -> FourierField:
    """A :class:`FourierField` with correlation length ``length`` (pixels) and rms ``rms``.

    Wavenumbers are drawn from a Gaussian spectrum of width ``1/length``, so the
    field has a Gaussian-like autocorrelation; each mode carries an equal share of
    the variance (a cosine of amplitude a has variance a²/2).
    """
    k = np.abs(rng.normal(0.0, 1.0 / length, n_modes)) + 0.25 / length
    angle = rng.uniform(0.0, np.pi, n_modes)
    wavevectors = np.stack([k * np.sin(angle), k * np.cos(angle)], axis=1)
    phases = rng.uniform(0.0, 2 * np.pi, n_modes)
    amplitudes = np.full(n_modes, rms * np.sqrt(2.0 / n_modes))
    return FourierField(wavevectors, phases, amplitudes)


_LATTICE_SPAN = 1 << 21  # lattice nodes per axis in the hash index (negative ones offset)


def lattice_noise(key: np.uint64, spacing: float, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smooth 3D random field: standard normal values on a cubic lattice, interpolated.

    Node ``(i, j, k)`` sits at ``spacing · (i, j, k)`` and holds the normal number
    hashed from ``key`` and its global index, so every point gets the same value
    whatever block evaluates it. Between nodes the values are blended with
    smoothstep weights (C¹, no kinks at the lattice planes).

    Parameters
    ----------
    key : numpy.uint64
        Random stream (:func:`operando.synth._rng.stream_key`).
    spacing : float
        Lattice spacing (the correlation length), in the units of the points.
    z, y, x : ndarray
        Broadcastable point coordinates.

    Returns
    -------
    ndarray of float64, the broadcast shape
        Standard deviation 1 at the nodes, about 0.6 on average between them.
    """
    points = np.broadcast_arrays(z / spacing, y / spacing, x / spacing)
    floor = [np.floor(p) for p in points]
    weights = [_smoothstep(p - f) for p, f in zip(points, floor, strict=True)]
    lo = [int(f.min()) if f.size else 0 for f in floor]
    hi = [int(f.max()) + 2 if f.size else 1 for f in floor]
    nodes = [np.arange(a, b, dtype=np.int64) + _LATTICE_SPAN // 2 for a, b in zip(lo, hi, strict=True)]
    index = (nodes[0][:, None, None] * _LATTICE_SPAN + nodes[1][None, :, None]) * _LATTICE_SPAN
    grid = _rng.normal(key, (index + nodes[2][None, None, :]).astype(np.uint64))
    at = [(f - a).astype(np.intp) for f, a in zip(floor, lo, strict=True)]
    out = np.zeros(points[0].shape)
    # A fixed corner order: the sum is the same float for a point in any block.
    for dz, dy, dx in np.ndindex(2, 2, 2):
        w = (weights[0] if dz else 1 - weights[0]) * (weights[1] if dy else 1 - weights[1])
        out += w * (weights[2] if dx else 1 - weights[2]) * grid[at[0] + dz, at[1] + dy, at[2] + dx]
    return out


def _smoothstep(f: np.ndarray) -> np.ndarray:
    return f * f * (3 - 2 * f)


def blob_outline(theta: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """Radius factor ``1 + Σ_k a_k cos(kθ + φ_k)`` of a star-shaped blob.

    Parameters
    ----------
    theta : ndarray
        Polar angle in rad.
    harmonics : ndarray of shape (H, 2)
        Amplitude and phase of harmonics k = 2 .. H + 1 (k = 1 would only shift the blob).
    """
    r = np.ones_like(theta)
    for k, (amp, phase) in enumerate(harmonics, start=2):
        r += amp * np.cos(k * theta + phase)
    return r


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation of (z, y, x) vectors by angles (about z, about y, about x) in degrees.

    Applied in the order x, then y, then z: ``R = Rz @ Ry @ Rx``.
    """
    az, ay, ax = np.deg2rad(angles_deg)
    cz, sz, cy, sy, cx, sx = np.cos(az), np.sin(az), np.cos(ay), np.sin(ay), np.cos(ax), np.sin(ax)
    # About z: rotates the (y, x) plane; about y: the (z, x) plane; about x: (z, y).
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return rz @ ry @ rx
