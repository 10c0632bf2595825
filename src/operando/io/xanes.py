"""Transmission to absorbance: the numpy kernel and its lazy dask mapping.

``absorbance = -ln((I - dark) / (flat - dark))``. A transmission ratio below
:data:`RATIO_FLOOR` (including zero and negative ratios from noise, and pixels
whose flat is not above the dark) is clipped to the floor, so absorbance is
capped at :data:`MAX_ABSORBANCE` ≈ 13.8. 16-bit counts cannot resolve a
transmission below 1/65535 ≈ 1.5e-5 anyway, so no real measurement is clipped;
the clipped pixels are counted and reported instead of silently turning into
NaN or inf.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

__all__ = ["MAX_ABSORBANCE", "RATIO_FLOOR", "absorbance", "count_clipped", "lazy_absorbance"]

RATIO_FLOOR = 1e-6
MAX_ABSORBANCE = -np.log(np.float32(RATIO_FLOOR))


def absorbance(
    sample: np.ndarray, flat: np.ndarray, dark: np.ndarray | float | None = None
) -> tuple[np.ndarray, int]:
    """Absorbance of transmission frames, with the count of clipped pixels.

    Parameters
    ----------
    sample : ndarray of shape (..., Y, X)
        Sample counts I.
    flat : ndarray broadcastable to ``sample``
        Reference (flat-field) counts.
    dark : ndarray broadcastable to ``sample``, or float, optional
        Dark counts (default 0).

    Returns
    -------
    absorbance : ndarray of float32, shape of ``sample``
        ``-ln((I - dark) / (flat - dark))``, capped at :data:`MAX_ABSORBANCE`.
    n_clipped : int
        Pixels whose ratio fell below :data:`RATIO_FLOOR` (or was undefined).
    """
    dark = np.float32(0) if dark is None else np.asarray(dark, dtype=np.float32)
    num = np.asarray(sample, dtype=np.float32) - dark
    den = np.asarray(flat, dtype=np.float32) - dark
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
    # `not >=` also catches NaN from 0/0 and a flat at or below the dark.
    clipped = ~(ratio > RATIO_FLOOR) | ~(den > 0)
    ratio[clipped] = 1.0
    out = -np.log(ratio, dtype=np.float32)
    out[clipped] = MAX_ABSORBANCE
    return np.minimum(out, MAX_ABSORBANCE, out=out), int(clipped.sum())


def lazy_absorbance(sample: da.Array, flat: da.Array, dark: da.Array | None = None) -> da.Array:
    """Map :func:`absorbance` over blocks of ``sample`` (flat and dark broadcast to it).

    The clip count is not returned: it is a cheap reduction over the result
    (pixels equal to :data:`MAX_ABSORBANCE`), done after writing so the inputs are
    read once.
    """
    args = [sample, da.broadcast_to(flat, sample.shape).rechunk(sample.chunks)]
    if dark is not None:
        args.append(da.broadcast_to(dark, sample.shape).rechunk(sample.chunks))
    return da.map_blocks(
        _absorbance_block, *args, dtype=np.float32, meta=np.empty((0,) * sample.ndim, np.float32)
    )


def _absorbance_block(sample: np.ndarray, flat: np.ndarray, dark: np.ndarray | None = None) -> np.ndarray:
    return absorbance(sample, flat, dark)[0]


def count_clipped(absorbance_data: da.Array, *, client: Any | None = None) -> int:
    """Clipped pixels in an absorbance array written by :func:`lazy_absorbance` (on ``client`` if given)."""
    return int((absorbance_data >= MAX_ABSORBANCE).sum().compute(scheduler=client))
