"""Reductions over zarr arrays: per-chunk partial results, then a tree of pairwise combines.

A reduction is two pure functions: ``partial(block, *, offset) -> P`` maps one
chunk (and its position in the array) to a small partial result, and
``combine(a, b) -> P`` merges two partials (associative). :func:`map_reduce`
reads each chunk straight from zarr in its own task and combines the partials
``split_every`` at a time, so a run is O(chunks) tasks and never holds more than
a chunk per worker. Ready-made: :func:`label_counts`, :func:`moments`,
:func:`bounding_boxes`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import reduce
from typing import Any, TypeVar

import dask
import numpy as np
import zarr

from operando.errors import LabelRangeError

__all__ = ["bounding_boxes", "label_counts", "map_reduce", "moments"]

P = TypeVar("P")


def _chunk_regions(arr: zarr.Array) -> list[tuple[slice, ...]]:
    # Read whole storage units: a shard read as inner chunks would be fetched once per chunk.
    unit = arr.shards or arr.chunks
    starts = [range(0, n, u) for n, u in zip(arr.shape, unit, strict=True)]
    return [
        tuple(slice(s, min(s + u, n)) for s, u, n in zip(corner, unit, arr.shape, strict=True))
        for corner in itertools.product(*starts)
    ]


def _leaf(fn: Callable[..., Any], arr: zarr.Array, region: tuple[slice, ...]) -> Any:
    return fn(np.asarray(arr[region]), offset=tuple(s.start for s in region))


def _combine_all(combine: Callable[[Any, Any], Any], *parts: Any) -> Any:
    return reduce(combine, parts)


def map_reduce(
    partial: Callable[..., P],
    combine: Callable[[P, P], P],
    arr: zarr.Array,
    *,
    split_every: int = 8,
    client: Any | None = None,
    retries: int = 2,
) -> P:
    """Reduce ``arr`` chunk by chunk.

    Parameters
    ----------
    partial : callable
        ``partial(block, *, offset) -> P``; ``offset`` is the block's start index.
    combine : callable
        ``combine(a, b) -> P``, associative.
    arr : zarr.Array
        The array, read one chunk (shard) per task.
    split_every : int, keyword-only
        Partials combined per tree node (tree depth is ``log_split_every(chunks)``).
    client : distributed.Client, optional, keyword-only
        Run on its cluster; else dask's threaded scheduler.
    retries : int, keyword-only
        Task retries under distributed.

    Returns
    -------
    P
        The combined result.
    """
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, not {split_every}")
    level = [dask.delayed(_leaf, pure=True)(partial, arr, r) for r in _chunk_regions(arr)]
    while len(level) > 1:
        level = [
            dask.delayed(_combine_all, pure=True)(combine, *level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    (root,) = level
    if client is not None:
        return client.compute(root, retries=retries).result()
    return root.compute(scheduler="threads")


def label_counts(labels: zarr.Array, n_classes: int, **kwargs: Any) -> np.ndarray:
    """Voxels per label ``0 .. n_classes-1``, shape ``(n_classes,)``, int64.

    Raises
    ------
    LabelRangeError
        If a label lies outside ``[0, n_classes)``.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise LabelRangeError(labels.name or "labels", f"labels must be integers, not {labels.dtype}")

    def count(block: np.ndarray, *, offset: tuple[int, ...]) -> np.ndarray:
        if block.size and (block.min() < 0 or block.max() >= n_classes):
            bad = block.min() if block.min() < 0 else block.max()
            where = f"{(labels.name or 'labels').lstrip('/')} (chunk at {offset})"
            raise LabelRangeError(where, f"label {bad} is outside [0, {n_classes})")
        return np.bincount(block.ravel(), minlength=n_classes).astype(np.int64)

    return map_reduce(count, np.add, labels, **kwargs)


def moments(arr: zarr.Array, **kwargs: Any) -> dict[str, float]:
    """Count, sum, mean, variance (population), min and max of ``arr``, in float64.

    Partials carry (count, mean, M2) and merge with Chan et al.'s pairwise update,
    which stays accurate where a running sum of squares would cancel.
    """

    def part(block: np.ndarray, *, offset: tuple[int, ...]) -> tuple[int, float, float, float, float]:
        b = block.astype(np.float64, copy=False)
        mean = float(b.mean()) if b.size else 0.0
        return (
            b.size,
            mean,
            float(((b - mean) ** 2).sum()),
            float(b.min(initial=np.inf)),
            float(b.max(initial=-np.inf)),
        )

    def merge(a: tuple, b: tuple) -> tuple:
        (na, ma, qa, lo_a, hi_a), (nb, mb, qb, lo_b, hi_b) = a, b
        n = na + nb
        if n == 0:
            return a
        delta = mb - ma
        return n, ma + delta * nb / n, qa + qb + delta**2 * na * nb / n, min(lo_a, lo_b), max(hi_a, hi_b)

    n, mean, m2, lo, hi = map_reduce(part, merge, arr, **kwargs)
    return {"count": n, "sum": mean * n, "mean": mean, "var": m2 / n if n else math.nan, "min": lo, "max": hi}


def bounding_boxes(labels: zarr.Array, *, background: int = 0, **kwargs: Any) -> dict[int, tuple[slice, ...]]:
    """The bounding box of every label but ``background``: ``{label: (slice, ...)}``, sorted by label.

    Equals ``scipy.ndimage.find_objects`` for the labels present, without its
    array of ``max(label)`` entries.
    """

    def part(block: np.ndarray, *, offset: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        coords = np.nonzero(block != background)
        values = block[coords]
        order = np.argsort(values, kind="stable")
        uniq, starts = np.unique(values[order], return_index=True)
        if uniq.size == 0:
            return {}
        # Per label, the min and max coordinate along each axis, in one pass per axis.
        lo = np.stack(
            [np.minimum.reduceat(c[order], starts) + o for c, o in zip(coords, offset, strict=True)], 1
        )
        hi = np.stack(
            [np.maximum.reduceat(c[order], starts) + o for c, o in zip(coords, offset, strict=True)], 1
        )
        return {int(v): (lo[i], hi[i]) for i, v in enumerate(uniq)}

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for label, (lo, hi) in b.items():
            out[label] = (
                (np.minimum(out[label][0], lo), np.maximum(out[label][1], hi)) if label in out else (lo, hi)
            )
        return out

    boxes = map_reduce(part, merge, labels, **kwargs)
    return {
        label: tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
        for label, (lo, hi) in sorted(boxes.items())
    }
