"""``predict`` out of core: engine overhead, MONAI, bounded worker memory, 1 vs 2 workers.

Three measurements in one run, each contender in its own fresh process (so that
its peak resident memory is its own):

1. **Overhead and peer.** One float32 stack of cross-sections, one small random
   2D conv net (CPU), the same patch grid, overlap, blend and batch size for all:

   * ``forward``   the model's own forward over the grid's patches (read from
     memory, batched, no blending): the floor of any sliding-window engine;
   * ``monai``     ``monai.inferers.sliding_window_inference`` on the in-memory
     array (constant blend), the peer;
   * ``operando (memory)`` :func:`operando.engine.patches.predict_array`, the
     same kernel on the in-memory array;
   * ``operando (zarr)`` :func:`operando.engine.predict.predict` from a zarr
     store to a zarr store, on a local thread pool, and on LocalClusters of
     1 and 2 single-thread worker processes.

   Ratios: ``predict / forward`` time (engine overhead; goal ≤ 1.10) and
   ``monai / predict`` time (relative throughput; goal ≥ 1.0).
2. **Memory.** ``predict`` with a 1×1 conv on arrays 1×, 4× and 16× the worker
   memory limit (LocalCluster, 1 GiB per worker): the peak worker RSS must stay
   flat.

Run from the repository root::

    /work/venv/bin/python benchmarks/bench_predict.py            # writes results/predict.md
    /work/venv/bin/python benchmarks/bench_predict.py --quick    # small, writes nothing
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown

HERE = Path(__file__).resolve().parent
RESULTS = {"overhead": HERE / "results" / "predict.md", "memory": HERE / "results" / "predict_memory.md"}
GIB = 2**30


class ConvNet(torch.nn.Module):
    """A small segmentation-like net: two 3×3 convs of ``width`` channels, 3 classes."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, 3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(fn: Callable[..., dict], kwargs: dict, queue: Any) -> None:
    try:
        if "shape" in kwargs:  # warm-up: torch's first calls in a process are several times slower
            fn(**{**kwargs, "shape": (1, 512, 512)})
        result = fn(**kwargs)
        result.setdefault("peak_rss", _peak_rss())
        queue.put(result)
    except BaseException as err:  # reported, not hidden
        queue.put({"error": repr(err)})


def isolated(fn: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``fn(**kwargs)`` in a fresh spawned process, after a small warm-up run; result and peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, kwargs, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{fn.__name__} failed: {result['error']}")
    return result


# ------------------------------------------------------------------ contenders (run in children)


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def run_forward(shape, patch, overlap, batch, threads: int | None = None) -> dict:
    from operando.engine.patches import PatchGrid

    if threads:
        torch.set_num_threads(threads)
    data, model = _data(shape), _net()
    grid = PatchGrid.build(shape, patch=patch, overlap=overlap, axes=(1, 2))
    starts = [(z, y, x) for z in range(shape[0]) for y in grid.starts[0] for x in grid.starts[1]]
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(starts), batch):
            chunk = [data[z, y : y + patch, x : x + patch] for z, y, x in starts[i : i + batch]]
            model(torch.from_numpy(np.stack(chunk)[:, None]))
    return {"seconds": time.perf_counter() - t, "patches": len(starts)}


def run_monai(shape, patch, overlap, batch) -> dict:
    from monai.inferers import sliding_window_inference

    data, model = _data(shape), _net()
    t = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(
            torch.from_numpy(data)[:, None], (patch, patch), batch, model, overlap=overlap, mode="constant"
        )
    return {"seconds": time.perf_counter() - t}


def run_predict_array(shape, patch, overlap, batch) -> dict:
    from operando.engine.patches import predict_array

    data, model = _data(shape), _net()
    t = time.perf_counter()
    predict_array(data, model, patch=(patch, patch), overlap=overlap, axes=(1, 2), batch_size=batch)
    return {"seconds": time.perf_counter() - t}


def _stores(root: Path, data: np.ndarray, chunks: tuple[int, ...]) -> tuple[zarr.Array, zarr.Array]:
    src = zarr.create_array(store=str(root / "src.zarr"), shape=data.shape, chunks=chunks, dtype="f4")
    src[...] = data
    out = zarr.create_array(store=str(root / "labels.zarr"), shape=data.shape, chunks=chunks, dtype="u1")
    return src, out


def run_predict_zarr(shape, patch, overlap, batch, workers: int) -> dict:
    from operando.engine.predict import predict

    with tempfile.TemporaryDirectory() as tmp:
        src, out = _stores(Path(tmp), _data(shape), (4, shape[1], shape[2]))
        with _cluster(workers) as client:
            # Warm up: the workers import torch and build the model once, as in any long run.
            small_src, small_out = _stores(Path(tmp) / "warm", _data((2, 512, 512)), (1, 512, 512))
            predict(small_src, _net(), small_out, patch=patch, axes=(1, 2), batch_size=batch, client=client)
            t = time.perf_counter()
            report = predict(
                src, _net(), out, patch=patch, overlap=overlap, axes=(1, 2), batch_size=batch, client=client
            )
            seconds = time.perf_counter() - t
    result = {"seconds": seconds}
    if client is not None:
        result["peak_rss"] = report.peak_worker_memory
    return result


class _cluster:
    """A LocalCluster of ``n`` single-thread worker processes (1 GiB each); None for 0."""

    def __init__(self, n: int, memory: str = "1GiB") -> None:
        self.n, self.memory, self.stack = n, memory, None

    def __enter__(self):
        if not self.n:
            return None
        from distributed import Client

        from operando.engine.cluster import local_cluster

        self.cluster = local_cluster(
            n_workers=self.n, threads_per_worker=1, memory_limit=self.memory, dashboard_address=":0"
        )
        self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc) -> None:
        if self.n:
            self.client.close()
            self.cluster.close()


class Threshold(torch.nn.Module):
    """A 1×1 conv with 2 classes: the cheapest model (argmax = x > 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pattern_kernel(block, *, region_in_block, block_origin):
    """Blocks of 0 and 1 (compress to almost nothing, so the disk is not the bottleneck)."""
    start = [o + r.start for o, r in zip(block_origin, region_in_block, strict=True)]
    z, y, x = (
        g + s
        for g, s in zip(
            np.ogrid[tuple(slice(0, n) for n in block[region_in_block].shape)], start, strict=True
        )
    )
    return ((z + y // 64 + x // 64) % 2).astype(np.float32)


def run_memory(gib: float, limit: str, workers: int) -> dict:
    from operando.engine.blockwise import map_to_zarr
    from operando.engine.predict import predict

    side = 2048
    depth = max(1, int(gib * GIB / (4 * side * side)))
    shape, chunks = (depth, side, side), (4, side // 2, side // 2)  # 16 MiB float32 chunks
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        src = zarr.create_array(store=f"{tmp}/src.zarr", shape=shape, chunks=chunks, dtype="f4")
        out = zarr.create_array(store=f"{tmp}/labels.zarr", shape=shape, chunks=chunks, dtype="u1")
        with _cluster(workers, limit) as client:
            map_to_zarr(pattern_kernel, src, src, client=client, quiet=True)
        with _cluster(workers, limit) as client:  # fresh workers: their peak RSS is this run's
            t = time.perf_counter()
            report = predict(src, Threshold(), out, patch=512, overlap=0.25, axes=(1, 2), client=client)
            seconds = time.perf_counter() - t
        ok = bool((out[0, :64, :64] == 0).all() and (out[0, :64, 64:128] == 1).all())
    return {
        "seconds": seconds,
        "nbytes": 4 * depth * side * side,
        "peak_rss": report.peak_worker_memory,
        "correct": ok,
    }


# ------------------------------------------------------------------ report


def overhead_table(shape, patch, overlap, batch) -> list[str]:
    common = {"shape": shape, "patch": patch, "overlap": overlap, "batch": batch}
    rows = {
        "forward (bare model, same patches)": isolated(run_forward, **common),
        "forward, 1 torch thread": isolated(run_forward, threads=1, **common),
        "MONAI sliding_window_inference (memory)": isolated(run_monai, **common),
        "operando predict_array (memory)": isolated(run_predict_array, **common),
        "operando predict, zarr → zarr, thread pool": isolated(run_predict_zarr, workers=0, **common),
        "operando predict, zarr → zarr, 1 worker × 1 thread": isolated(run_predict_zarr, workers=1, **common),
        "operando predict, zarr → zarr, 2 workers × 1 thread": isolated(
            run_predict_zarr, workers=2, **common
        ),
    }
    voxels = int(np.prod(shape))
    base = rows["forward (bare model, same patches)"]["seconds"]
    monai = rows["MONAI sliding_window_inference (memory)"]["seconds"]
    lines = [
        f"Array {shape} float32 ({voxels * 4 / 2**20:.0f} MiB), 2D patches {patch}², overlap {overlap}, "
        f"batch {batch}, {rows['forward (bare model, same patches)']['patches']} patches; "
        "model: 2 × (3×3 conv, 16 ch) + 1×1 conv → 3 classes, CPU.",
        "",
        "| contender | seconds | Mvoxel/s | time / forward | MONAI time / this | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s = r["seconds"]
        lines.append(
            f"| {name} | {s:.2f} | {voxels / s / 1e6:.2f} | {s / base:.2f} | {monai / s:.2f} | "
            f"{r['peak_rss'] / 2**20:.0f} |"
        )
    one = rows["operando predict, zarr → zarr, 1 worker × 1 thread"]["seconds"]
    two = rows["operando predict, zarr → zarr, 2 workers × 1 thread"]["seconds"]
    single = rows["forward, 1 torch thread"]["seconds"]
    lines += [
        "",
        f"Speed-up from 1 to 2 workers: {one / two:.2f}×. Engine overhead at equal resources "
        f"(1 worker × 1 thread against the forward pass on 1 torch thread): {one / single:.2f}×.",
        "",
    ]
    lines.append(
        "Peak RSS is the contender's process; for the LocalCluster rows, the highest worker's "
        "(the client process holds no data)."
    )
    return lines


def memory_table(sizes: list[float], limit: str, workers: int) -> list[str]:
    lines = [
        f"LocalCluster of {workers} single-thread worker(s), memory limit {limit} each; float32 source "
        "(n, 2048, 2048) in 16 MiB chunks (4, 1024, 1024), uint8 labels; 2D patches 512², overlap 0.25; 1×1 conv model.",
        "",
        "| array | × worker limit | seconds | Mvoxel/s | peak worker RSS (MiB) | labels correct |",
        "|---|---|---|---|---|---|",
    ]
    limit_bytes = _bytes(limit)
    for gib in sizes:
        r = isolated(run_memory, gib=gib, limit=limit, workers=workers)
        lines.append(
            f"| {r['nbytes'] / GIB:.1f} GiB | {r['nbytes'] / limit_bytes:.0f} | {r['seconds']:.1f} | "
            f"{r['nbytes'] / 4 / r['seconds'] / 1e6:.1f} | {r['peak_rss'] / 2**20:.0f} | {r['correct']} |"
        )
    return lines


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--section", choices=("overhead", "memory", "all"), default="all")
    args = parser.parse_args()
    shape = (2, 256, 256) if args.quick else (32, 1024, 1024)
    sizes = [0.125, 0.25] if args.quick else [1, 4, 16]
    sections = {
        "overhead": lambda: [
            "# predict: overhead against the bare forward pass and MONAI; 1 vs 2 workers",
            *overhead_table(shape, 128, 0.25, 8),
        ],
        "memory": lambda: [
            "# predict: peak worker memory against array size",
            *memory_table(sizes, "1GiB", workers=2),
        ],
    }
    for name, make in sections.items():
        if args.section not in (name, "all"):
            continue
        head, *body = make()
        text = "\n".join([head, "", machine_markdown(), "", *body]) + "\n"
        print(text)
        if not args.quick:
            RESULTS[name].write_text(text)


if __name__ == "__main__":
    main()
