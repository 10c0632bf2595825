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

from collections.abc import Sequence

import numba
import numpy as np

__all__ = ["add_side_runs", "slice_counts"]

#: Label value → nothing to count (background, unknown values).
NOT_COUNTED = -1


def add_side_runs(
    slabs: Sequence[np.ndarray],
    planes: np.ndarray,
    faces: np.ndarray,
    out: np.ndarray,
    *,
    first: int,
    n_total: int,
    low: bool,
) -> None:
    """Add the runs of one side of a chunk column to per-column counts and move its electrode face.

    Parameters
    ----------
    slabs : sequence of ndarray of uint8 of shape (N_i, A, B)
        Consecutive pieces of the side along the normal (its chunks, each cut at the
        split plane): a run goes on across their boundaries, so the column is closed
        once, at its end, not once per chunk (``benchmarks/results/stats.md``).
        Slice 0 of the first is global slice ``first``.
    planes : ndarray of int64 of shape (256,)
        Count plane of ``out`` for each label value, :data:`NOT_COUNTED` for none.
    faces : ndarray of bool of shape (256,)
        Label values that make the electrode's face (electrode, pit).
    out : ndarray of shape (P + 2, A, B), uint16 or int32
        Counts (planes ``0..P-1``), then the low face + 1 and ``n_total`` − the high
        face (0: none), each the maximum so far; updated in place.
    first, n_total : int, keyword-only
        Global index of the side's first slice, and the slices of the whole column.
    low : bool, keyword-only
        The side lies below the split plane: its face is the highest face voxel
        (towards the gap), else the lowest.
    """
    if planes.shape != (256,) or faces.shape != (256,):
        raise ValueError(f"256-entry tables needed, got {planes.shape}, {faces.shape}")
    counts = out.reshape(out.shape[0], -1)
    if not np.shares_memory(counts, out):
        raise ValueError("out must be C-contiguous: the kernel updates it in place")
    # Global first slice of each column's open run. int32 (and the run ends): with the counts of a
    # 128² column, the working set then fits a 512 KiB L2 (-6 % kernel time on phantom columns, stats.md).
    start = np.full(counts.shape[1], first, np.int32)
    before, z = None, first
    for slab in slabs:
        flat, words = _flat_words(slab)
        if flat.shape[0] == 0:
            continue
        if before is None:  # slice 0 compared with itself: no run ends before it
            before = flat[0], words[0]
        _runs(flat, words, *before, planes, faces, counts, z, n_total, low, start, False)
        before, z = (flat[-1], words[-1]), z + flat.shape[0]
    if before is not None:  # no slices left: every run ends after the last one
        _runs(flat[:0], words[:0], *before, planes, faces, counts, z, n_total, low, start, True)


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
def _row_ends(row, row_words, prev, prev_words, ends):  # pragma: no cover - compiled
    """Columns whose label changes from slice ``prev`` to slice ``row`` (their run ends) → how many.

    Eight columns per 64-bit compare: most do not change, and most slices not at
    all, which a branch-free pass over the slice finds first (it vectorizes: ~2× the
    branching compare's speed).
    """
    count = 0
    if _any_change(row_words, prev_words):
        for k in range(row_words.shape[0]):
            if row_words[k] != prev_words[k]:
                for j in range(8 * k, 8 * k + 8):
                    if row[j] != prev[j]:
                        ends[count] = j
                        count += 1
    for j in range(row_words.shape[0] * 8, row.shape[0]):
        if row[j] != prev[j]:
            ends[count] = j
            count += 1
    return count


@numba.njit(nogil=True, cache=True)
def _all_end(ends):  # pragma: no cover - compiled
    """Every column's run ends (the slab's last slice): ``ends`` is 0…m−1 → m."""
    for j in range(ends.shape[0]):
        ends[j] = j
    return ends.shape[0]


@numba.njit(nogil=True, cache=True)
def _any_change(a, b):  # pragma: no cover - compiled
    acc = np.uint64(0)
    for k in range(a.shape[0]):
        acc |= a[k] ^ b[k]
    return acc != 0


# Each kernel closes its runs in its own loop body: as a called function taking the arrays, numba did not
# inline it, and the calls cost several times the whole pass.
@numba.njit(nogil=True, cache=True)
def _runs(
    flat, words, prev, prev_words, planes, faces, out, first, n_total, low, start, close
):  # pragma: no cover - compiled
    """Runs ending in ``flat`` (global slices ``first``…), after slice ``prev``; ``close``: all end after it."""
    n, m = flat.shape
    ends = np.empty(m, np.int32)
    p = out.shape[0] - 2
    for z in range(n + close):
        before = prev if z == 0 else flat[z - 1]
        if z == n:
            count = _all_end(ends)
        elif z == 0:
            count = _row_ends(flat[0], words[0], prev, prev_words, ends)
        else:
            count = _row_ends(flat[z], words[z], flat[z - 1], words[z - 1], ends)
        for q in range(count):
            j = ends[q]
            value = before[j]
            plane = planes[value]
            if plane >= 0:
                out[plane, j] += first + z - start[j]
            # Explicit comparisons: numba's max() of a uint16 and an int64 ran 10x slower.
            if faces[value]:
                if low:
                    top = first + z  # highest face slice + 1
                    if top > out[p, j]:
                        out[p, j] = top
                else:
                    bottom = n_total - start[j]
                    if bottom > out[p + 1, j]:
                        out[p + 1, j] = bottom
            start[j] = first + z


@numba.njit(nogil=True, cache=True)
def _value_runs(flat, words, value, per_slice):  # pragma: no cover - compiled
    """Difference array of the runs of ``value``: +1 where one starts, −1 past its end."""
    n, m = flat.shape
    start = np.zeros(m, np.int64)
    ends = np.empty(m, np.int64)
    for z in range(1, n + 1):
        if z == n:
            count = _all_end(ends)
        else:
            count = _row_ends(flat[z], words[z], flat[z - 1], words[z - 1], ends)
        for q in range(count):
            j = ends[q]
            if flat[z - 1, j] == value:
                per_slice[start[j]] += 1
                per_slice[z] -= 1
            start[j] = z
