"""The chunking policy: the one place that decides how operando datasets are chunked.

Rules, in order:

1. ``time`` and ``scan`` are chunked by 1: a timestep or a scan is the unit of
   acquisition, registration and streaming writes.
2. ``energy`` gets its own chunk length (``chunks.energy``, default 16), never 1
   and never the whole axis, so that both a per-frame image and a per-pixel
   spectrum touch a handful of chunks.
3. The spatial dims (``z``, ``y``, ``x``, or any others) share the remaining
   budget as equal edges, so that a chunk is about ``chunks.target_mib``
   (default 96 MiB, uncompressed) and never above 128 MiB; a dim shorter than
   the edge is taken whole and its share goes to the others. Edges are
   multiples of 64 (16 for small edges) for aligned patch grids, grown back a
   step at a time after rounding down so that a large array's chunk stays
   within ``[target/1.5, target]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_CHUNK_BYTES", "choose_chunks"]

MAX_CHUNK_BYTES = 128 * 2**20
_UNIT_DIMS = frozenset({"time", "scan"})


def choose_chunks(
    shape: Sequence[int],
    dtype: np.typing.DTypeLike,
    dims: Sequence[str],
    *,
    target_mib: float = 96,
    energy_chunk: int = 16,
) -> tuple[int, ...]:
    """Chunk shape for an array of ``shape`` and ``dtype`` with named ``dims``.

    Parameters
    ----------
    shape : sequence of int
        Array shape.
    dtype : dtype-like
        Array dtype (its item size sets the element budget).
    dims : sequence of str
        Dimension names, e.g. ``("time", "z", "y", "x")``.
    target_mib : float, keyword-only
        Target uncompressed chunk size in MiB.
    energy_chunk : int, keyword-only
        Chunk length along ``energy``.

    Returns
    -------
    tuple of int
        One chunk length per dimension, each in ``[1, shape[i]]``.
    """
    if len(shape) != len(dims):
        raise ValueError(f"shape {tuple(shape)} and dims {tuple(dims)} differ in length")
    chunks = [1 if d in _UNIT_DIMS else 0 for d in dims]
    for i, d in enumerate(dims):
        if d == "energy":
            chunks[i] = max(1, min(shape[i], energy_chunk))
    fixed = int(np.prod([c for c in chunks if c], dtype=np.int64))
    budget = min(target_mib * 2**20, MAX_CHUNK_BYTES) / np.dtype(dtype).itemsize / fixed
    free = [i for i, c in enumerate(chunks) if c == 0]
    for i, edge in _share_budget([shape[i] for i in free], budget):
        chunks[free[i]] = edge
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape, strict=True))


def _share_budget(lengths: list[int], budget: float) -> list[tuple[int, int]]:
    """Equal edges for ``lengths`` whose product is about ``budget`` elements."""
    todo = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out = []
    while todo:
        edge = max(1.0, budget) ** (1.0 / len(todo))
        i = todo[0]
        if lengths[i] <= edge:
            out.append((i, lengths[i]))
            budget /= max(lengths[i], 1)
            todo.pop(0)
            continue
        step = _step(edge)
        edges = {j: min(max(1, int(edge // step) * step), lengths[j]) for j in todo}
        # Rounding every edge down can lose up to (1 - step/edge)**k of the budget
        # (a 62.5 MiB uint16 cube for a 96 MiB target): grow the smallest edge
        # that is not whole by a step while the chunk stays within the budget.
        while growable := [j for j in todo if edges[j] < lengths[j]]:
            j = min(growable, key=lambda j: edges[j])
            bigger = min(edges[j] + step, lengths[j])
            if math.prod(edges.values()) // edges[j] * bigger > budget:
                break
            edges[j] = bigger
        out.extend(edges.items())
        break
    return out


def _step(edge: float) -> int:
    return 64 if edge >= 128 else 16 if edge >= 32 else 1
