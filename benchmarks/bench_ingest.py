"""Ingest throughput and peak memory of a synthetic CT time series of multi-page TIFFs.

Each timestep is written frame by frame with tifffile (never whole in memory),
then ``operando.io.ingest_ct`` runs in a fresh subprocess that reports its own
peak RSS. Usage::

    python benchmarks/bench_ingest.py --timesteps 2 --frames 512 --size 1024 --target-mib 32
    python benchmarks/bench_ingest.py --quick     # 1 × (32, 128, 128), 1 MiB chunks, writes nothing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_markdown

_CHILD = """
import json, resource, sys, time
from operando.config import config
from operando.io.ingest import ingest_ct
paths, out, target = json.loads(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with config.set({"chunks.target_mib": target}):
    ingest_ct(paths, out, voxel_size_um=1.0)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_growth": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024}))
"""


def write_series(folder: Path, timesteps: int, frames: int, size: int) -> list[Path]:
    """One (frames, size, size) uint16 TIFF per timestep, written a frame at a time."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4000, (size, size), dtype=np.uint16)  # noisy, so compression is realistic
    paths = []
    for t in range(timesteps):
        paths.append(folder / f"t{t:03d}.tif")
        with tifffile.TiffWriter(paths[-1]) as tw:
            for z in range(frames):
                tw.write(base + np.uint16(z + t), contiguous=True, photometric="minisblack")
    return paths


def run(timesteps: int, frames: int, size: int, target_mib: float) -> dict[str, float]:
    """Ingest a fresh series in a subprocess; return its size, MB/s and peak RSS growth."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        paths = write_series(Path(tmp), timesteps, frames, size)
        nbytes = sum(p.stat().st_size for p in paths)
        arg = json.dumps([[str(p) for p in paths], str(Path(tmp) / "out.zarr"), target_mib])
        done = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"input_mb": nbytes / 1e6, "mb_per_s": nbytes / 1e6 / result["seconds"], **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--target-mib", type=float, nargs="+", default=[8, 32, 96])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ingest.md")
    parser.add_argument(
        "--quick", action="store_true", help="1 × (32, 128, 128), 1 MiB chunks, no results file"
    )
    args = parser.parse_args()
    if args.quick:
        args.timesteps, args.frames, args.size, args.target_mib = 1, 32, 128, [1.0]
    rows = []
    for target in args.target_mib:
        t0 = time.perf_counter()
        r = run(args.timesteps, args.frames, args.size, target)
        rows.append(
            f"| {target:g} | {r['input_mb']:.0f} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | "
            f"{r['peak_rss_growth'] / 1e6:.0f} | {r['peak_rss_growth'] / 1e6 / r['input_mb']:.2f} |"
        )
        print(rows[-1], f"(with generation {time.perf_counter() - t0:.0f} s)", flush=True)
    shape = f"{args.timesteps} × ({args.frames}, {args.size}, {args.size}) uint16"
    text = "\n".join(
        [
            "# Ingest benchmark (`benchmarks/bench_ingest.py`)",
            "",
            f"CT time series of {shape} multi-page TIFFs, ingested with `ingest_ct` in a fresh process.",
            "Peak RSS growth is `ru_maxrss` after minus before the ingest, in that process.",
            "",
            "| chunks.target_mib | input MB | seconds | MB/s | peak RSS growth MB | growth / input |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            machine_markdown(),
            "",
        ]
    )
    if args.quick:
        print(text)
        return
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
