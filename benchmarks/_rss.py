"""Peak RSS of a LocalCluster's workers during one step, sampled from outside.

``ru_maxrss`` read inside a worker cannot be reset between steps and misses
nothing only for the whole life of the process; a thread here samples every
worker's resident set instead, so each step gets its own peak.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import psutil


def run_sampled(client: Any, fn: Callable[[], Any], *, interval_s: float = 0.2) -> tuple[Any, int, int]:
    """Run ``fn()`` on freshly restarted workers: (its result, peak worker RSS in bytes, workers lost)."""
    client.restart()
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
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    lost = set(pids) - set(client.run(os.getpid).values())
    return result, peak[0], len(lost)
