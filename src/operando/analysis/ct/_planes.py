"""Compiled reductions of the statistics' in-plane maps (numba), exact in integers.

After the pass over the labels, the statistics reduce ``T × 9`` count and face
planes: totals, occupied pixels and Pearson moments. In numpy that was a dtype
conversion and a temporary per plane and per reduction, serial after the
parallel pass (``benchmarks/results/stats.md``); here each is one read of the plane.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["pearson", "plane_totals"]


def plane_totals(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and non-zero pixels of each plane of integer maps.

    Parameters
    ----------
    maps : ndarray of shape (T, C, A, B), unsigned or signed integers
        Any strides (a view of some planes of a larger array is fine).

    Returns
    -------
    sums, nonzero : ndarray of int64 of shape (T, C)
    """
    if maps.ndim != 4 or maps.dtype.kind not in "iu":
        raise ValueError(f"integer maps of shape (T, C, A, B) needed, got {maps.dtype} {maps.shape}")
    sums = np.zeros(maps.shape[:2], np.int64)
    nonzero = np.zeros(maps.shape[:2], np.int64)
    _plane_totals(maps, sums, nonzero)
    return sums, nonzero


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two integer maps of the same shape; NaN if either is constant.

    The five moments are summed exactly in int64 (values up to 65535, the statistics'
    uint16 counts, on planes up to 2³¹ pixels) and combined in Python integers, so r
    is exact up to its final rounding (no centred float copies).
    """
    if x.shape != y.shape or x.dtype.kind not in "iu" or y.dtype.kind not in "iu":
        raise ValueError(f"integer maps of one shape needed, got {x.dtype} {x.shape} and {y.dtype} {y.shape}")
    sx, sy, sxx, syy, sxy = (int(m) for m in _moments(x.ravel(), y.ravel()))
    n = x.size
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    if var_x == 0 or var_y == 0:
        return math.nan
    return (n * sxy - sx * sy) / (math.sqrt(var_x) * math.sqrt(var_y))


@numba.njit(nogil=True, cache=True)
def _plane_totals(maps, sums, nonzero):  # pragma: no cover - compiled
    for t in range(maps.shape[0]):
        for c in range(maps.shape[1]):
            total = np.int64(0)
            occupied = np.int64(0)
            for a in range(maps.shape[2]):
                for b in range(maps.shape[3]):
                    v = np.int64(maps[t, c, a, b])
                    total += v
                    occupied += v != 0
            sums[t, c] = total
            nonzero[t, c] = occupied


@numba.njit(nogil=True, cache=True)
def _moments(x, y):  # pragma: no cover - compiled
    sx = sy = sxx = syy = sxy = np.int64(0)
    for i in range(x.shape[0]):
        a, b = np.int64(x[i]), np.int64(y[i])
        sx += a
        sy += b
        sxx += a * a
        syy += b * b
        sxy += a * b
    return sx, sy, sxx, syy, sxy
