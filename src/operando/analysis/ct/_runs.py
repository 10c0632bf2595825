"""Chunk kernel of the statistics pass: runs of one label along the normal, per column (numba).

Label columns are piecewise constant along the electrode normal (layers), so a
column of a few hundred voxels holds a handful of runs. The kernel walks the
slices once, comparing each with the one before eight voxels at a time, and
only where a column changes does it close a run: add its length to the run's
count plane and move the face. Cost: one memory pass plus work per run, not
per voxel and class (the numpy version masked each class slice by slice, at
several passes per chunk; ``benchmarks/results/stats.md``).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["add_side_runs"]

#: Label value → nothing to count (background, unknown values).
NOT_COUNTED = -1


def add_side_runs(
    slab: np.ndarray,
    planes: np.ndarray,
    faces: np.ndarray,
    out: np.ndarray,
    *,
    first: int,
    n_total: int,
    low: bool,
) -> None:
    """Add the runs of a one-sided slab to per-column counts and move its electrode face.

    Parameters
    ----------
    slab : ndarray of uint8 of shape (N, A, B)
        Labels, the normal first; slice 0 is global slice ``first``.
    planes : ndarray of int64 of shape (256,)
        Count plane of ``out`` for each label value, :data:`NOT_COUNTED` for none.
    faces : ndarray of bool of shape (256,)
        Label values that make the electrode's face (electrode, pit).
    out : ndarray of shape (P + 2, A, B), uint16 or int32
        Counts (planes ``0..P-1``), then the low face + 1 and ``n_total`` − the high
        face (0: none), each the maximum so far; updated in place.
    first, n_total : int, keyword-only
        Global index of the slab's first slice, and the slices of the whole column.
    low : bool, keyword-only
        The slab lies below the split plane: its face is the highest face voxel
        (towards the gap), else the lowest.
    """
    if slab.dtype != np.uint8 or planes.shape != (256,) or faces.shape != (256,):
        # The compiled loop indexes the tables by label value without bounds checks.
        raise ValueError(
            f"uint8 labels and 256-entry tables needed, got {slab.dtype}, {planes.shape}, {faces.shape}"
        )
    if slab.shape[0] == 0:
        return
    flat = np.ascontiguousarray(slab).reshape(slab.shape[0], -1)
    words = flat[:, : flat.shape[1] // 8 * 8].view(np.uint64)  # (N, 0) under 8 columns: all tail
    counts = out.reshape(out.shape[0], -1)
    if not np.shares_memory(counts, out):
        raise ValueError("out must be C-contiguous: the kernel updates it in place")
    _runs(flat, words, planes, faces, counts, first, n_total, low)


@numba.njit(nogil=True, cache=True)
def _runs(flat, words, planes, faces, out, first, n_total, low):  # pragma: no cover - compiled
    n, m = flat.shape
    start = np.zeros(m, np.int64)
    tail = words.shape[1] * 8
    for z in range(1, n):
        for k in range(words.shape[1]):
            if words[z, k] != words[z - 1, k]:  # eight columns at once; most do not change
                for j in range(8 * k, 8 * k + 8):
                    if flat[z, j] != flat[z - 1, j]:
                        _close(flat[z - 1, j], start[j], z, j, planes, faces, out, first, n_total, low)
                        start[j] = z
        for j in range(tail, m):
            if flat[z, j] != flat[z - 1, j]:
                _close(flat[z - 1, j], start[j], z, j, planes, faces, out, first, n_total, low)
                start[j] = z
    for j in range(m):
        _close(flat[n - 1, j], start[j], n, j, planes, faces, out, first, n_total, low)


@numba.njit(nogil=True, cache=True)
def _close(value, z_from, z_to, j, planes, faces, out, first, n_total, low):  # pragma: no cover
    """The run of ``value`` over slices [z_from, z_to) of column ``j`` ends."""
    plane = planes[value]
    if plane >= 0:
        out[plane, j] += z_to - z_from
    if faces[value]:
        # Explicit comparisons: numba's max() of a uint16 and an int64 ran 10x slower.
        p = out.shape[0] - 2
        if low:
            top = first + z_to  # highest face slice + 1
            if top > out[p, j]:
                out[p, j] = top
        else:
            bottom = n_total - (first + z_from)
            if bottom > out[p + 1, j]:
                out[p + 1, j] = bottom
