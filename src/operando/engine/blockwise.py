"""Map a pure numpy kernel over the chunks of a zarr array, with a halo, into owned output chunks.

The kernel is a plain function, testable alone::

    def mean3(block, *, region_in_block, block_origin):
        return scipy.ndimage.uniform_filter(block, 3, mode="nearest")[region_in_block]

:func:`map_to_zarr` is bookkeeping around it. The unit of ownership is the output
chunk, or the shard when the output is sharded (zarr rewrites a whole shard on
every partial write, so two writers of one shard silently lose data). Each task
owns a box of whole units; for each unit it reads the unit plus the halo straight
from the source zarr array (clipped at the array's borders), calls the kernel,
writes the unit once, and records it in the resume manifest
(:mod:`operando.engine.manifest`). A re-run skips verified units. The output is
marked complete (array attribute ``operando:complete``) only when every unit is.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from operando.engine.manifest import Manifest
from operando.engine.progress import Progress, RunReport, iter_completed, peak_worker_memory
from operando.errors import ShapeMismatchError, SharedChunkWriteError
from operando.io.store import COMPLETE_ATTR

__all__ = ["Kernel", "check_write_plan", "map_to_zarr", "plan_tasks", "unit_shape"]

log = logging.getLogger("operando.engine")

Kernel = Callable[..., np.ndarray]
Region = tuple[slice, ...]

#: Default ceiling on the task count: enough to balance workers, few enough for the scheduler.
MAX_TASKS = 4000


def unit_shape(out: zarr.Array) -> tuple[int, ...]:
    """The unit of write ownership of ``out``: its shard shape when sharded, else its chunk shape."""
    return tuple(out.shards or out.chunks)


def plan_tasks(
    out: zarr.Array, *, task_shape: Sequence[int] | None = None, max_tasks: int = MAX_TASKS
) -> list[Region]:
    """Split ``out`` into task regions, boxes of ``task_shape`` elements in C order.

    Parameters
    ----------
    out : zarr.Array
        Output array, shape ``(n0, ..., nk)``.
    task_shape : sequence of int, optional, keyword-only
        Elements per task along each axis. Default: one unit, grown along the
        leading axes until there are at most ``max_tasks`` tasks.
    max_tasks : int, keyword-only
        Ceiling used by the default ``task_shape``.

    Returns
    -------
    list of tuple of slice
        Regions, clipped to the array. Validated by :func:`check_write_plan`.
    """
    shape, unit = out.shape, unit_shape(out)
    if task_shape is None:
        per_task = [1] * len(shape)
        grid = [math.ceil(n / u) for n, u in zip(shape, unit, strict=True)]
        for ax in range(len(shape)):
            # Grow the leading axis first: its units are contiguous in C order.
            while math.prod(grid) > max_tasks and per_task[ax] * unit[ax] < shape[ax]:
                per_task[ax] *= 2
                grid[ax] = math.ceil(shape[ax] / (per_task[ax] * unit[ax]))
        task_shape = [p * u for p, u in zip(per_task, unit, strict=True)]
    task_shape = tuple(int(t) for t in task_shape)
    if len(task_shape) != len(shape) or min(task_shape, default=1) < 1:
        raise ShapeMismatchError(
            out.name or "output",
            f"task shape {task_shape} does not fit the array shape {shape}",
            remedy="Pass one positive length per axis.",
        )
    starts = [range(0, n, t) for n, t in zip(shape, task_shape, strict=True)]
    regions = [
        tuple(slice(s, min(s + t, n)) for s, t, n in zip(corner, task_shape, shape, strict=True))
        for corner in itertools.product(*starts)
    ]
    check_write_plan(out, regions)
    return regions


def check_write_plan(out: zarr.Array, regions: Sequence[Region]) -> None:
    """Refuse a plan in which two tasks would write parts of one output chunk or shard.

    Every region must be a box of whole units (a region may end at the array's
    border inside a unit), and no unit may be in two regions.

    Raises
    ------
    SharedChunkWriteError
        Naming the array, the unit (chunk or shard) shape and the offending region.
    """
    shape, unit = out.shape, unit_shape(out)
    what = f"shard shape {unit}" if out.shards else f"chunk shape {unit}"
    name = out.name or "output"
    owner = np.full([math.ceil(n / u) for n, u in zip(shape, unit, strict=True)], -1, dtype=np.int64)
    for i, region in enumerate(regions):
        for s, u, n in zip(region, unit, shape, strict=True):
            if s.start % u or (s.stop % u and s.stop != n):
                raise SharedChunkWriteError(
                    name,
                    f"task region {_fmt(region)} covers part of a unit ({what}), "
                    "so another task would write the rest of it",
                )
        units = tuple(slice(s.start // u, math.ceil(s.stop / u)) for s, u in zip(region, unit, strict=True))
        taken = owner[units]
        if (taken >= 0).any():
            other = regions[int(taken[taken >= 0].flat[0])]
            raise SharedChunkWriteError(
                name, f"task regions {_fmt(other)} and {_fmt(region)} both write a unit ({what})"
            )
        owner[units] = i


def _fmt(region: Region) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


@dataclass(frozen=True)
class _Job:
    """Everything a task needs but the shared values; pickled into each task, so small.

    Zarr arrays pickle as references to their stores.
    """

    kernel: Kernel
    source: zarr.Array
    outs: tuple[zarr.Array, ...]
    halo: tuple[int, ...]
    manifest: Manifest
    kernel_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Shared:
    """Large kernel arguments, sent to each worker once (scattered) rather than with every task."""

    values: Mapping[str, Any]


def _run_task(job: _Job, region: Region, shared: _Shared | None = None) -> tuple[int, int, int, int]:
    """Compute, write and record every unit of ``region``; (done, reused, stored bytes, logical bytes)."""
    kwargs = {**job.kernel_kwargs, **(shared.values if shared else {})}
    unit = unit_shape(job.outs[0])
    done = reused = stored = logical = 0
    ranges = [range(s.start // u, math.ceil(s.stop / u)) for s, u in zip(region, unit, strict=True)]
    for index in itertools.product(*ranges):
        keys = [_unit_key(out, index) for out in job.outs]
        if job.manifest.verified(index, keys):
            reused += 1
            continue
        values = _compute_unit(job, index, kwargs)
        for out, v in zip(job.outs, values, strict=True):
            out[(..., *_unit_region(index, unit, job.source.shape))] = v
            logical += v.size * out.dtype.itemsize
        stored += job.manifest.record(index, keys)
        done += 1
    return done, reused, stored, logical


def _unit_key(out: zarr.Array, index: tuple[int, ...]) -> str:
    """The chunk (shard) key of unit ``index`` in ``out``; leading whole axes are at index 0."""
    return out.metadata.encode_chunk_key((0,) * (out.ndim - len(index)) + tuple(index))


#: Decoded chunks at least this big are freed by a collection right after use (see read_region).
_COLLECT_BYTES = 4 << 20


def read_region(source: zarr.Array, region: Sequence[slice | int]) -> np.ndarray:
    """``source[region]``, decoding one source chunk at a time.

    zarr decodes every chunk a selection touches at once, and leaves each decoded
    chunk and its compressed bytes in reference cycles until a full collection
    (measured: 137 MiB for an 80 MiB chunk). A block spanning a plane of sixteen
    32 MiB chunks would hold half a GiB in a worker; here it holds one chunk.

    Parameters
    ----------
    source : zarr.Array
    region : sequence of slice or int
        One entry per axis: a slice with explicit start and stop (step 1), or an
        index (the axis is dropped, as in numpy).

    Returns
    -------
    ndarray of the region's shape, the source's dtype
    """
    out = np.empty([r.stop - r.start for r in region if isinstance(r, slice)], dtype=source.dtype)
    big = math.prod(source.chunks) * source.dtype.itemsize >= _COLLECT_BYTES
    per_axis = [
        [slice(max(r.start, k), min(r.stop, k + c)) for k in range(r.start - r.start % c, r.stop, c)]
        if isinstance(r, slice)
        else [r]
        for r, c in zip(region, source.chunks, strict=True)
    ]
    for piece in itertools.product(*per_axis):
        local = tuple(
            slice(p.start - r.start, p.stop - r.start)
            for p, r in zip(piece, region, strict=True)
            if isinstance(r, slice)
        )
        out[local] = source[piece]
        if big:  # a collection costs tens of ms in a large process: only for big chunks
            gc.collect()
    return out


def _unit_region(index: tuple[int, ...], unit: Sequence[int], shape: Sequence[int]) -> Region:
    return tuple(slice(i * u, min((i + 1) * u, n)) for i, u, n in zip(index, unit, shape, strict=True))


def _compute_unit(job: _Job, index: tuple[int, ...], kwargs: Mapping[str, Any]) -> list[np.ndarray]:
    """Read the unit + halo, run the kernel, check the shape of each returned array."""
    shape = job.source.shape
    target = _unit_region(index, unit_shape(job.outs[0]), shape)
    read = tuple(
        slice(max(0, t.start - h), min(n, t.stop + h))
        for t, h, n in zip(target, job.halo, shape, strict=True)
    )
    block = read_region(job.source, read)
    inner = tuple(slice(t.start - r.start, t.stop - r.start) for t, r in zip(target, read, strict=True))
    result = job.kernel(block, region_in_block=inner, block_origin=tuple(r.start for r in read), **kwargs)
    values = [np.asarray(v) for v in (result if isinstance(result, tuple) else (result,))]
    name = getattr(job.kernel, "__name__", repr(job.kernel))
    if len(values) != len(job.outs):
        raise ShapeMismatchError(
            name,
            f"kernel returned {len(values)} array(s) for {len(job.outs)} output(s)",
            remedy="Return one array per output, as a tuple when there are several.",
        )
    for out, v in zip(job.outs, values, strict=True):
        want = out.shape[: out.ndim - len(shape)] + tuple(t.stop - t.start for t in target)
        if v.shape != want:
            raise ShapeMismatchError(
                name,
                f"kernel returned shape {v.shape} for the region {_fmt(target)} of "
                f"{(out.name or 'output').lstrip('/')}, expected {want}",
                remedy="Return the values of block[region_in_block] only (crop the halo away).",
            )
    return values


def _with_retries(fn: Callable[[], Any], retries: int) -> Any:
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception:
            if attempt == retries:
                raise
            log.warning("task failed, retrying (%d of %d)", attempt + 1, retries, exc_info=True)
    raise AssertionError("unreachable")


def _open_source(source: zarr.Array | tuple[str | Path, str]) -> zarr.Array:
    if isinstance(source, zarr.Array):
        return source
    path, name = source
    return zarr.open_array(store=str(path), path=name, mode="r")


def map_to_zarr(
    kernel: Kernel,
    source: zarr.Array | tuple[str | Path, str],
    out: zarr.Array | Sequence[zarr.Array],
    *,
    halo: int | Sequence[int] = 0,
    kernel_kwargs: Mapping[str, Any] | None = None,
    shared: Mapping[str, Any] | None = None,
    task_shape: Sequence[int] | None = None,
    client: Any | None = None,
    resources: Mapping[str, float] | None = None,
    retries: int = 2,
    run_key: str | None = None,
    quiet: bool = False,
    name: str | None = None,
) -> RunReport:
    """Apply ``kernel`` to every output unit of ``out``, reading unit + ``halo`` from ``source``.

    Parameters
    ----------
    kernel : callable
        ``kernel(block, *, region_in_block, block_origin, **kernel_kwargs, **shared)``:
        ``block`` is the source window of shape ``unit + 2*halo`` (less where clipped
        at the borders), ``block_origin`` the global index of ``block[0, ...]`` (for
        kernels that depend on position, e.g. a global patch grid),
        ``region_in_block`` the slices of the output unit inside it. Returns the
        unit's values, shape ``block[region_in_block].shape`` (one array per output,
        as a tuple, when ``out`` is a sequence). Pure and picklable.
    source : zarr.Array or (store path, array path)
        Input, shape ``S``.
    out : zarr.Array or sequence of zarr.Array
        Output(s), created by the caller in a local store (chunks, shards, dtype and
        codecs are used as they are). The first has shape ``S`` and sets the unit
        of ownership; any further one has shape ``L + S`` with its leading axes
        ``L`` in one chunk (e.g. class probabilities) and the same unit over ``S``.
    halo : int or sequence of int, keyword-only
        Extra elements read on each side, per axis.
    kernel_kwargs : mapping, optional, keyword-only
        Small extra keyword arguments of the kernel, sent with every task.
    shared : mapping, optional, keyword-only
        Large extra keyword arguments (e.g. model weights), sent once to each
        worker and shared by its tasks.
    task_shape : sequence of int, optional, keyword-only
        Elements per task; whole units only (see :func:`plan_tasks`).
    client : distributed.Client, optional, keyword-only
        Run on its cluster; without one, a local thread pool.
    resources : mapping, optional, keyword-only
        Worker resources each task holds under distributed, e.g. ``{"GPU": 1}``.
    retries : int, keyword-only
        Times a failed task is retried (dask task retries under distributed).
    run_key : str, optional, keyword-only
        Identifies the computation for resume (default: the kernel's qualified
        name); a manifest made under another key, shape or halo is discarded.
    quiet : bool, keyword-only
        No progress bar.
    name : str, optional, keyword-only
        Name in the bar and the log line (default: the first output's).

    Returns
    -------
    RunReport
        Units done and reused, throughput and peak worker memory.

    Raises
    ------
    SharedChunkWriteError
        If ``task_shape`` would split a chunk (shard) between tasks.
    ShapeMismatchError
        If the outputs do not fit ``source`` as above, or the kernel returns the wrong shape.
    Exception
        The first task error, after every other task has finished and been recorded.
    """
    started = time.perf_counter()
    source = _open_source(source)
    outs = (out,) if isinstance(out, zarr.Array) else tuple(out)
    # A chunk of only the fill value (an all-background label chunk) must still be
    # stored: a store is marked complete only when every chunk is on disk.
    outs = tuple(o.with_config({"write_empty_chunks": True}) for o in outs)
    _check_outputs(source, outs)
    halo_t = _halo_tuple(halo, outs[0])
    regions = plan_tasks(outs[0], task_shape=task_shape)
    manifest = _start_manifest(outs, halo_t, run_key or getattr(kernel, "__qualname__", repr(kernel)))
    job = _Job(kernel, source, outs, halo_t, manifest, dict(kernel_kwargs or {}))
    name = name or (outs[0].name or "output").lstrip("/")
    report = RunReport(name=name, chunks_total=_unit_count(outs[0]))
    bar = Progress(name, report.chunks_total, quiet=quiet)
    errors: list[BaseException] = []
    futures, pool = _submit(
        job, regions, _Shared(dict(shared)) if shared else None, client, resources, retries
    )
    try:
        for fut in iter_completed(futures):
            try:
                done, reused, stored, logical = fut.result()
            except Exception as err:  # finish the others first: their units are then resumable
                errors.append(err)
                continue
            report.chunks_done += done
            report.chunks_reused += reused
            report.bytes_written += stored
            report.nbytes_logical += logical
            bar.advance(done + reused, reused)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    report.seconds = time.perf_counter() - started
    report.peak_worker_memory = peak_worker_memory(client)
    log.info(report.summary())
    if errors:
        raise errors[0]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for o in outs:
        o.attrs[COMPLETE_ATTR] = stamp
    return report


def _check_outputs(source: zarr.Array, outs: Sequence[zarr.Array]) -> None:
    shape, unit = tuple(source.shape), unit_shape(outs[0])
    if tuple(outs[0].shape) != shape:
        raise ShapeMismatchError(
            outs[0].name or "output", f"source shape {source.shape} differs from output shape {outs[0].shape}"
        )
    for o in outs[1:]:
        lead = tuple(o.shape[: o.ndim - len(shape)])
        if o.ndim < len(shape) or tuple(o.shape[len(lead) :]) != shape or unit_shape(o) != lead + unit:
            raise ShapeMismatchError(
                o.name or "output",
                f"shape {o.shape} with unit {unit_shape(o)} does not extend the source shape {shape} "
                f"with unit {unit}",
                remedy="Give every further output shape L + source shape, chunked as L + the first output's unit.",
            )


def _halo_tuple(halo: int | Sequence[int], out: zarr.Array) -> tuple[int, ...]:
    halo_t = (halo,) * out.ndim if isinstance(halo, int) else tuple(int(h) for h in halo)
    if len(halo_t) != out.ndim or min(halo_t, default=0) < 0:
        raise ShapeMismatchError(
            out.name or "output",
            f"halo {halo} does not fit {out.ndim} axes",
            remedy="Pass one non-negative halo per axis.",
        )
    return halo_t


def _unit_count(out: zarr.Array) -> int:
    return math.prod(math.ceil(n / u) for n, u in zip(out.shape, unit_shape(out), strict=True))


def _start_manifest(outs: Sequence[zarr.Array], halo: tuple[int, ...], run_key: str) -> Manifest:
    manifest = Manifest.for_arrays(outs)
    for o in outs:
        # Not complete while being written, even if an earlier run finished.
        if COMPLETE_ATTR in o.attrs:
            del o.attrs[COMPLETE_ATTR]
    manifest.start(
        {
            "shape": [list(o.shape) for o in outs],
            "unit": [list(unit_shape(o)) for o in outs],
            "dtype": [str(o.dtype) for o in outs],
            "halo": list(halo),
            "run_key": run_key,
        }
    )
    return manifest


def _submit(
    job: _Job,
    regions: Sequence[Region],
    shared: _Shared | None,
    client: Any | None,
    resources: Mapping[str, float] | None,
    retries: int,
) -> tuple[list[Any], concurrent.futures.ThreadPoolExecutor | None]:
    """Futures of every task: on the client's cluster, else on a local thread pool."""
    if client is not None:
        extra = {"shared": client.scatter(shared, broadcast=True, hash=False)} if shared else {}
        futures = client.map(
            partial(_run_task, job), regions, retries=retries, pure=False, resources=resources, **extra
        )
        return futures, None
    pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)
    task = partial(_run_task, job, shared=shared)
    return [pool.submit(_with_retries, partial(task, r), retries) for r in regions], pool
