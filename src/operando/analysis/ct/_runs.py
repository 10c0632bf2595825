"""Chunk kernels of the statistics pass: runs of one label along the normal, per column (numba).

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

__all__ = ["add_side_runs", "slice_counts"]

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
    if planes.shape != (256,) or faces.shape != (256,):
        raise ValueError(f"256-entry tables needed, got {planes.shape}, {faces.shape}")
    flat, words = _flat_words(slab)
    if flat.shape[0] == 0:
        return
    counts = out.reshape(out.shape[0], -1)
    if not np.shares_memory(counts, out):
        raise ValueError("out must be C-contiguous: the kernel updates it in place")
    _runs(flat, words, planes, faces, counts, first, n_total, low)


def slice_counts(chunk: np.ndarray, value: int) -> np.ndarray:
    """Voxels equal to ``value`` per slice of a chunk (N, A, B) of uint8 labels → ndarray of int64 of shape (N,)."""
    flat, words = _flat_words(chunk)
    per_slice = np.zeros(flat.shape[0] + 1, np.int64)
    if flat.shape[0]:
        _value_runs(flat, words, value, per_slice)
    return np.cumsum(per_slice[:-1])


def _flat_words(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, A, B) uint8 → C-contiguous (N, A·B) and its first A·B // 8 · 8 columns as uint64 words."""
    if chunk.dtype != np.uint8:  # the compiled loops index 256-entry tables by label value, unchecked
        raise ValueError(f"uint8 labels needed, got {chunk.dtype}")
    flat = np.ascontiguousarray(chunk).reshape(chunk.shape[0], int(np.prod(chunk.shape[1:])))
    return flat, flat[:, : flat.shape[1] // 8 * 8].view(np.uint64)  # (N, 0) under 8 columns: all tail


@numba.njit(nogil=True, cache=True)
def _ends(flat, words, z, ends):  # pragma: no cover - compiled
    """Columns whose run ends before slice ``z`` (their label changes there; all at z = N) → how many.

    Eight columns per 64-bit compare: most do not change, and most slices not at
    all, which a branch-free pass over the slice finds first (it vectorizes: ~2× the
    branching compare's speed).
    """
    n, m = flat.shape
    if z == n:
        for j in range(m):
            ends[j] = j
        return m
    count = 0
    if _any_change(words[z], words[z - 1]):
        for k in range(words.shape[1]):
            if words[z, k] != words[z - 1, k]:
                for j in range(8 * k, 8 * k + 8):
                    if flat[z, j] != flat[z - 1, j]:
                        ends[count] = j
                        count += 1
    for j in range(words.shape[1] * 8, m):
        if flat[z, j] != flat[z - 1, j]:
            ends[count] = j
            count += 1
    return count


@numba.njit(nogil=True, cache=True)
def _any_change(a, b):  # pragma: no cover - compiled
    acc = np.uint64(0)
    for k in range(a.shape[0]):
        acc |= a[k] ^ b[k]
    return acc != 0


# Each kernel closes its runs in its own loop body: as a called function taking the
# arrays, numba did not inline it, and the calls cost several times the whole pass.
@numba.njit(nogil=True, cache=True)
def _runs(flat, words, planes, faces, out, first, n_total, low):  # pragma: no cover - compiled
    n, m = flat.shape
    start = np.zeros(m, np.int64)
    ends = np.empty(m, np.int64)
    p = out.shape[0] - 2
    for z in range(1, n + 1):
        for q in range(_ends(flat, words, z, ends)):
            j = ends[q]
            value = flat[z - 1, j]
            plane = planes[value]
            if plane >= 0:
                out[plane, j] += z - start[j]
            # Explicit comparisons: numba's max() of a uint16 and an int64 ran 10x slower.
            if faces[value]:
                if low:
                    top = first + z  # highest face slice + 1
                    if top > out[p, j]:
                        out[p, j] = top
                else:
                    bottom = n_total - (first + start[j])
                    if bottom > out[p + 1, j]:
                        out[p + 1, j] = bottom
            start[j] = z


@numba.njit(nogil=True, cache=True)
def _value_runs(flat, words, value, per_slice):  # pragma: no cover - compiled
    """Difference array of the runs of ``value``: +1 where one starts, −1 past its end."""
    n, m = flat.shape
    start = np.zeros(m, np.int64)
    ends = np.empty(m, np.int64)
    for z in range(1, n + 1):
        for q in range(_ends(flat, words, z, ends)):
            j = ends[q]
            if flat[z - 1, j] == value:
                per_slice[start[j]] += 1
                per_slice[z] -= 1
            start[j] = z
