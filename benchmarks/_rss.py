"""Peak RSS of a LocalCluster's workers during one step, sampled from outside.

``ru_maxrss`` read inside a worker cannot be reset between steps and misses
nothing only for the whole life of the process; a thread here samples every
worker's resident set instead, so each step gets its own peak.

Each step gets a cluster of its own: ``client.restart()`` between steps sometimes
waited its full 120 s for workers that never came back (seen on this 2-core
machine in two of about ten quick runs), and a new cluster costs a few seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Sampled:
    """One step: its result, wall time (the step alone, not the cluster's start), peak worker RSS, workers lost."""

    result: Any
    wall_s: float
    peak_rss: int
    lost: int


def run_sampled(
    fn: Callable[[Any], Any], *, workers: int, memory_limit: str, interval_s: float = 0.2
) -> Sampled:
    """Run ``fn(client)`` on a fresh LocalCluster of ``workers`` single-thread processes, their RSS sampled."""
    from distributed import Client

    from operando.engine.cluster import local_cluster

    with (
        local_cluster(n_workers=workers, threads_per_worker=1, memory_limit=memory_limit) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        procs = [psutil.Process(pid) for pid in pids]
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.wait(interval_s):
                for proc in procs:
                    try:
                        peak[0] = max(peak[0], proc.memory_info().rss)
                    except psutil.Error:  # a worker that died: counted below
                        pass

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        try:
            result = fn(client)
        finally:
            wall = time.perf_counter() - start
            done.set()
            thread.join()
        lost = set(pids) - set(client.run(os.getpid).values())
    return Sampled(result, wall, peak[0], len(lost))
