"""Resume: interrupted runs (a task error, a killed worker, a killed process) finish identically.

The source holds each element's linear index, so a kernel knows which output unit
it computes (the index at the unit's first element) without any engine hook; every
kernel call leaves a file in ``calls/``, so tests count exactly what was recomputed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

from operando.engine.blockwise import map_to_zarr
from operando.engine.manifest import MANIFEST_DIR
from operando.io.store import COMPLETE_ATTR

SHAPE, CHUNKS = (24, 24), (4, 4)
N_UNITS = 36


def counted_kernel(block, *, region_in_block, block_origin, calls, fail_at=-1, exit_at=-1, marker=None):
    """3×3 mean; records the call; fails (or kills its process) once at the unit starting at ``fail_at``."""
    first = int(block[region_in_block].flat[0])
    Path(calls, f"{first}-{uuid.uuid4().hex}").touch()
    if first in (fail_at, exit_at) and not Path(marker).exists():
        Path(marker).touch()
        if first == exit_at:
            os._exit(1)
        raise RuntimeError(f"injected failure at {first}")
    return ndi.uniform_filter(block, 3, mode="nearest")[region_in_block]


def _setup(root: Path) -> tuple[zarr.Array, zarr.Array, np.ndarray]:
    data = np.arange(np.prod(SHAPE), dtype="f8").reshape(SHAPE)
    group = zarr.open_group(str(root), mode="w", zarr_format=3)
    src = group.create_array("src", shape=SHAPE, chunks=(5, 7), dtype="f8")
    src[...] = data
    out = group.create_array("out", shape=SHAPE, chunks=CHUNKS, dtype="f8")
    (root.parent / "calls").mkdir(exist_ok=True)
    return src, out, ndi.uniform_filter(data, 3, mode="nearest")


def _calls(root: Path) -> list[int]:
    calls = root.parent / "calls"
    found = sorted(int(p.name.split("-")[0]) for p in calls.iterdir())
    for p in calls.iterdir():
        p.unlink()
    return found


def _unit_first(index: tuple[int, int]) -> int:
    return index[0] * CHUNKS[0] * SHAPE[1] + index[1] * CHUNKS[1]


def _entries(root: Path) -> list[tuple[int, int]]:
    return [tuple(json.loads(p.read_text())["index"]) for p in (root / MANIFEST_DIR / "out").glob("*.*.json")]


def test_task_error_then_resume(tmp_path):
    root = tmp_path / "a.zarr"
    src, out, want = _setup(root)
    bad = _unit_first((2, 3))
    kw = {"calls": str(tmp_path / "calls"), "fail_at": bad, "marker": str(tmp_path / "failed")}
    with pytest.raises(RuntimeError, match="injected failure"):
        map_to_zarr(counted_kernel, src, out, halo=1, kernel_kwargs=kw, retries=0, quiet=True)
    assert COMPLETE_ATTR not in zarr.open_array(str(root), path="out").attrs
    assert len(_entries(root)) == N_UNITS - 1
    assert len(_calls(root)) == N_UNITS

    report = map_to_zarr(counted_kernel, src, out, halo=1, kernel_kwargs=kw, retries=0, quiet=True)
    assert (report.chunks_reused, report.chunks_done) == (N_UNITS - 1, 1)
    assert _calls(root) == [bad]
    np.testing.assert_array_equal(out[...], want)
    assert COMPLETE_ATTR in zarr.open_array(str(root), path="out").attrs


def test_changed_run_key_recomputes(tmp_path):
    root = tmp_path / "a.zarr"
    src, out, want = _setup(root)
    kw = {"calls": str(tmp_path / "calls")}
    map_to_zarr(counted_kernel, src, out, halo=1, kernel_kwargs=kw, run_key="v1", quiet=True)
    report = map_to_zarr(counted_kernel, src, out, halo=1, kernel_kwargs=kw, run_key="v2", quiet=True)
    assert (report.chunks_reused, report.chunks_done) == (0, N_UNITS)
    np.testing.assert_array_equal(out[...], want)


def test_killed_worker(tmp_path, client):
    root = tmp_path / "a.zarr"
    src, out, want = _setup(root)
    bad = _unit_first((4, 1))
    kw = {"calls": str(tmp_path / "calls"), "exit_at": bad, "marker": str(tmp_path / "exited")}
    report = map_to_zarr(
        counted_kernel, src, out, halo=1, kernel_kwargs=kw, client=client, retries=2, quiet=True
    )
    assert (tmp_path / "exited").exists()
    np.testing.assert_array_equal(out[...], want)
    assert report.chunks_done + report.chunks_reused == N_UNITS
    assert bad in _calls(root)
    client.wait_for_workers(2, timeout=30)


SCRIPT = """
import sys, time
import numpy as np, scipy.ndimage as ndi, zarr
from operando.engine.blockwise import map_to_zarr

def slow(block, *, region_in_block, block_origin):
    time.sleep(0.05)
    return ndi.uniform_filter(block, 3, mode="nearest")[region_in_block]

root = sys.argv[1]
map_to_zarr(slow, zarr.open_array(root, path="src"), zarr.open_array(root, path="out"),
            halo=1, run_key="mean3", retries=0, quiet=True)
"""


def test_killed_process_and_tampered_chunk(tmp_path):
    root = tmp_path / "a.zarr"
    src, out, want = _setup(root)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(root)])
    deadline = time.monotonic() + 60
    while len(_entries(root)) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = sorted(_entries(root))
    assert 8 <= len(done) < N_UNITS
    assert COMPLETE_ATTR not in zarr.open_array(str(root), path="out").attrs

    tampered = done[0]
    chunk = root / "out" / "c" / str(tampered[0]) / str(tampered[1])
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))

    kw = {"calls": str(tmp_path / "calls")}
    report = map_to_zarr(counted_kernel, src, out, halo=1, kernel_kwargs=kw, run_key="mean3", quiet=True)
    recomputed = _calls(root)
    assert report.chunks_reused == len(done) - 1 > 0
    assert report.chunks_done == N_UNITS - report.chunks_reused == len(recomputed)
    assert _unit_first(tampered) in recomputed
    assert not {_unit_first(i) for i in done[1:]} & set(recomputed)
    np.testing.assert_array_equal(out[...], want)
    assert COMPLETE_ATTR in zarr.open_array(str(root), path="out").attrs
