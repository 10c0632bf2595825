"""Progress bar, run report and peak worker memory for long engine steps.

``dask.diagnostics.ProgressBar`` hooks the local schedulers only and shows
nothing under ``distributed``; here the bar is fed from the futures as they
complete (:func:`iter_completed` works for both kinds), and prints to stderr
with ``\\r`` so that stdout stays clean for results.
"""

from __future__ import annotations

import concurrent.futures
import logging
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import dask
from dask.callbacks import Callback
from dask.core import flatten

__all__ = ["Progress", "RunReport", "compute_with_progress", "iter_completed", "peak_worker_memory"]

log = logging.getLogger("operando.engine")


@dataclass
class RunReport:
    """What a blockwise run did.

    Attributes
    ----------
    name : str
        The output array.
    chunks_total : int
        Output units (chunks, or shards when sharded) in the array.
    chunks_done : int
        Units computed and written by this run.
    chunks_reused : int
        Units skipped because the manifest verified them from an earlier run.
    bytes_written : int
        Stored (encoded) bytes written by this run.
    seconds : float
        Wall time.
    peak_worker_memory : int
        Highest peak resident memory of a worker process, in bytes.
    """

    name: str
    chunks_total: int
    chunks_done: int = 0
    chunks_reused: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    peak_worker_memory: int = 0
    nbytes_logical: int = field(default=0, repr=False)

    @property
    def throughput_mb_s(self) -> float:
        """Uncompressed output MB (1e6 bytes) computed per second of wall time."""
        return self.nbytes_logical / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The final log line."""
        return (
            f"{self.name}: {self.chunks_done} chunks done, {self.chunks_reused} reused "
            f"of {self.chunks_total}, {self.throughput_mb_s:.1f} MB/s, "
            f"peak worker memory {self.peak_worker_memory / 2**20:.0f} MiB, {self.seconds:.1f} s"
        )


class Progress:
    """A one-line terminal progress bar: ``name [#####     ] 12/40 chunks (3 reused)``.

    Parameters
    ----------
    name : str
        What is being computed.
    total : int
        Units expected.
    quiet : bool, keyword-only
        Print nothing.
    stream : text file, keyword-only
        Where to print (default stderr).
    """

    def __init__(self, name: str, total: int, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.name, self.total, self.quiet = name, total, quiet
        self.stream = sys.stderr if stream is None else stream
        self.done = self.reused = 0
        self._last = 0.0

    def advance(self, done: int, reused: int = 0) -> None:
        """Count ``done`` more units, of which ``reused`` were skipped."""
        if not done:
            return
        self.done += done
        self.reused += reused
        now = time.monotonic()
        # Redrawing more than ~10 times a second only costs terminal time.
        if now - self._last > 0.1:
            self._last = now
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the bar's line."""
        if not self.quiet:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if self.quiet:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + " " * (width - filled)
        self.stream.write(f"\r{self.name} [{bar}] {self.done}/{self.total} chunks ({self.reused} reused)")
        self.stream.flush()


def iter_completed(futures: Iterable[Any]) -> Iterator[Any]:
    """Futures in completion order: distributed futures or :mod:`concurrent.futures` ones."""
    futures = list(futures)
    if not futures:
        return
    if isinstance(futures[0], concurrent.futures.Future):
        yield from concurrent.futures.as_completed(futures)
        return
    from distributed import as_completed

    # the futures' own client: it need not be the default one
    yield from as_completed(futures, loop=futures[0].client.loop)


def _maxrss() -> int:
    # ru_maxrss is the process's peak resident set, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_worker_memory(client: Any | None = None) -> int:
    """Highest peak RSS among the client's workers (this process without a client), in bytes."""
    if client is None:
        return _maxrss()
    try:
        return max(client.run(_maxrss).values(), default=0)
    except Exception:  # a worker lost at the very end must not fail a finished run
        log.debug("could not read worker memory", exc_info=True)
        return 0


def compute_with_progress(
    collection: Any,
    *,
    name: str,
    client: Any | None = None,
    quiet: bool = False,
    unit_prefix: str = "store-map",
) -> RunReport:
    """Compute a dask collection (e.g. ``to_zarr(compute=False)``) with the bar and the final log line.

    The bar counts the graph's tasks whose name starts with ``unit_prefix`` (the
    per-chunk writes of ``dask.array.store``; every task when there are none).
    Under ``client`` the bar is fed from the futures of those tasks; without one
    the local threaded scheduler runs the graph and a callback feeds it.
    """
    started = time.perf_counter()
    graph = collection.__dask_graph__()
    final = list(flatten(collection.__dask_keys__()))
    units = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith(unit_prefix)]
    units = units or [k for k in graph if k not in final]
    bar = Progress(name, len(units), quiet=quiet)
    try:
        if client is None:
            with _CountTasks(set(units), bar):
                dask.compute(collection, scheduler="threads")
        else:
            unit_set = set(units)
            futures = client.get(graph, units + [k for k in final if k not in unit_set], sync=False)
            unit_futures = set(futures[: len(units)])
            for fut in iter_completed(futures):
                fut.result()
                bar.advance(int(fut in unit_futures))
    finally:
        bar.close()
    report = RunReport(name, len(units), chunks_done=len(units), seconds=time.perf_counter() - started)
    report.peak_worker_memory = peak_worker_memory(client)
    return report


class _CountTasks(Callback):
    """Advance a bar when one of ``keys`` finishes on a local scheduler."""

    def __init__(self, keys: set[Any], bar: Progress) -> None:
        super().__init__()
        self.keys, self.bar = keys, bar

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        # A key may be reported more than once (nested callback registrations); count it once.
        if key in self.keys:
            self.keys.discard(key)
            self.bar.advance(1)
