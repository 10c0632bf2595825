"""How the cost of the CT pipeline grows with the data: register → segment → stats up to 1e9 voxels.

A synthetic CT series of ``--voxels`` in total (default 1e9: T = 4 volumes of
610 × 640 × 640) and the same at smaller ``--fractions`` (default 1/64, 1/8, 1;
the T volumes keep the 610 : 640 : 640 proportions) goes through the three steps
of ``operando.analysis.ct.pipeline`` on a LocalCluster (``--workers`` worker
processes × 1 thread, ``--worker-memory`` each):

register
    rigid estimate on ``--box``³ sub-volumes (a fixed cost per timestep) and the
    blockwise resampling (linear in the voxels); ``on_failure="report"``, and a
    timestep whose estimate did not converge is resampled anyway and counted.
segment
    a ``small`` ResidualUNet, untrained (random weights cost the same time as
    trained ones), over x cross-sections, on ``--device`` (``auto``: CUDA when torch
    sees it).
stats
    ``ct stats`` on the phantom's exact segmentation (written beforehand, not
    timed), as an untrained model's labels have no cell to measure.

Each step runs on a fresh cluster, so the peak worker RSS of a row is
that step's alone. Linearity is the time per voxel relative to the smallest
series (1.00: linear; below: fixed costs amortized). The projection of the second
paper's data (25 volumes × 26e9 voxels) divides its voxels by the per-step rates
of the largest series: one node of this kind, and N nodes assuming perfectly
linear scaling across nodes (not measured here).

Run::

    /work/venv/bin/python benchmarks/bench_scale.py                       # 1e9 voxels, writes results/scale.md
    /work/venv/bin/python benchmarks/bench_scale.py --fractions 1/64,1/8 --no-write
    /work/venv/bin/python benchmarks/bench_scale.py --quick               # 4e6 voxels, writes nothing
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_markdown
from _rss import run_sampled

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.md"
STAGES = ("register", "segment", "stats")
PAPER_VOLUMES, PAPER_VOXELS = 25, 26e9
NODES = (1, 4, 16, 64)
ASPECT_Z = 610 / 640  # z : y = z : x of the 1e9-voxel series


def series_shape(voxels: float, t: int) -> tuple[int, int, int, int]:
    """(T, Z, Y, X) of about ``voxels`` in all, Y = X and Z = ASPECT_Z · X."""
    side = round((voxels / t / ASPECT_Z) ** (1 / 3))
    return t, max(1, round(voxels / t / side**2)), side, side


def _fractions(text: str) -> list[Fraction]:
    try:
        values = sorted(Fraction(v.strip()) for v in text.split(","))
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(f"--fractions: {err}; e.g. 1/64,1/8,1") from None
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError("--fractions must be positive, e.g. 1/64,1/8,1")
    return values


def _device(name: str) -> tuple[str, str]:
    """(torch device, its description) for ``--device``."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return name, f"cuda ({torch.cuda.get_device_name(0)})"
    return name, "cpu"


def phantom_texture() -> dict[str, float]:
    """A static electrode texture for the registration to lock onto, if ``make_ct`` has the option."""
    from operando.synth.ct import make_ct

    return {"texture_rms": 0.05} if "texture_rms" in inspect.signature(make_ct).parameters else {}


def register_all(cell: Path, output: Path, *, box: int, client):
    """``register_dataset`` with ``on_failure="report"``, resampling non-converged timesteps too.

    Whether the estimate converges on a synthetic phantom depends on its texture,
    and this benchmark times the work, not the accuracy (``bench_register.py``):
    ``apply_failed=True``. The transforms (with ``converged``) are returned.
    """
    from operando.analysis.ct.resample import register_dataset

    return register_dataset(
        cell, output, sub_volume_size=box, on_failure="report", apply_failed=True, client=client
    )


def _stage(args: argparse.Namespace, voxels: int, fn) -> tuple[dict[str, float], object]:
    """Run ``fn(client)`` on a fresh cluster: (wall time, voxels/s, sampled peak worker RSS, lost), result."""
    step = run_sampled(fn, workers=args.workers, memory_limit=args.worker_memory)
    stats = {
        "wall_s": step.wall_s,
        "voxels_per_s": voxels / step.wall_s,
        "peak_worker_rss_mib": step.peak_rss / 2**20,
    }
    return {**stats, "workers_lost": step.lost}, step.result


def run_series(shape: tuple[int, ...], args: argparse.Namespace, root: Path) -> dict:
    """Synthesize one series under ``root`` and time register → segment → stats on it."""
    from operando.analysis.ct.pipeline import segment, statistics
    from operando.models.networks import ResidualUNet
    from operando.models.weights import save_model
    from operando.synth import synth_ct
    from operando.synth.ct import CT_CLASSES
    from operando.synth.labels import truth_segmentation

    voxels = int(np.prod(shape))
    t0 = time.perf_counter()
    motion = {"max_angle_deg": 0.5, "max_shift_voxels": 2.0, **phantom_texture()}
    # Synthesis (not timed) in this process: the phantom's own tasks are not what is measured,
    # and need more than a small worker's memory limit.
    with dask.config.set(scheduler="threads"):
        cell = synth_ct(root / "cell.zarr", shape=shape, seed=args.seed, **motion)
        truth = truth_segmentation(cell, root / "truth_seg.zarr")
    setup = time.perf_counter() - t0
    net = ResidualUNet.preset("small", spatial_dims=2, out_channels=len(CT_CLASSES))
    weights = save_model(root / "small.safetensors", net, classes=CT_CLASSES)
    box = min(args.box, *shape[1:])
    stages = {
        "register": lambda client: register_all(cell, root / "reg.zarr", box=box, client=client),
        "segment": lambda client: segment(
            root / "reg.zarr", weights, root / "seg.zarr", device=args.device, patch=args.patch, client=client
        ),
        "stats": lambda client: statistics(truth, root / "stats", plating_side="high", client=client),
    }
    timed, results = {}, {}
    for name, fn in stages.items():
        timed[name], results[name] = _stage(args, voxels, fn)
        print(f"  {shape} {name}: {timed[name]['wall_s']:.1f} s", flush=True)
    converged = int(results["register"]["converged"].sum())
    return {"shape": list(shape), "voxels": voxels, "setup_s": setup, "converged": converged, "stages": timed}


def _with_total(run: dict) -> dict[str, dict[str, float]]:
    stages = dict(run["stages"])
    wall = sum(s["wall_s"] for s in stages.values())
    peak = max(s["peak_worker_rss_mib"] for s in stages.values())
    stages["total"] = {"wall_s": wall, "voxels_per_s": run["voxels"] / wall, "peak_worker_rss_mib": peak}
    return stages


def scaling_table(runs: list[dict]) -> list[str]:
    """One row per series and step (+ total): wall, Mvoxel/s, peak worker RSS, linearity."""
    base = _with_total(runs[0])
    rows = [
        "| series (T, Z, Y, X) | voxels | step | wall s | Mvoxel/s | peak worker RSS MiB | time/voxel vs smallest |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        label = f"{run['fraction']} · {tuple(run['shape'])}"
        for name, s in _with_total(run).items():
            linear = base[name]["voxels_per_s"] / s["voxels_per_s"]
            step = f"**{name}**" if name == "total" else name
            rows.append(
                f"| {label} | {run['voxels']:.3g} | {step} | {s['wall_s']:.1f} | {s['voxels_per_s'] / 1e6:.2f} "
                f"| {s['peak_worker_rss_mib']:.0f} | {linear:.2f} |"
            )
    return rows


def projection(run: dict, nodes: tuple[int, ...] = NODES) -> tuple[list[str], dict]:
    """Hours for the paper's data at the per-step rates of ``run``, on 1 and on N nodes (linear)."""
    voxels = PAPER_VOLUMES * PAPER_VOXELS
    hours = {name: voxels / s["voxels_per_s"] / 3600 for name, s in run["stages"].items()}
    hours["total"] = sum(hours.values())
    head = " | ".join(f"{n} node{'s' * (n > 1)}" for n in nodes)
    rows = [f"| step | {head} |", "|---" * (len(nodes) + 1) + "|"]
    for name, h in hours.items():
        rows.append(f"| {name} | " + " | ".join(_duration(h / n) for n in nodes) + " |")
    return rows, {"voxels": voxels, "nodes": list(nodes), "hours_one_node": hours}


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def report(runs: list[dict], args: argparse.Namespace, device: str) -> tuple[str, dict]:
    """The results markdown and the projection of the largest series."""
    largest = runs[-1]
    proj_rows, proj = projection(largest)
    base, top = _with_total(runs[0])["total"], _with_total(largest)["total"]
    ratio = base["voxels_per_s"] / top["voxels_per_s"]
    lines = [
        "# CT pipeline scaling: register → segment (small model) → stats",
        "",
        machine_markdown(),
        "",
        f"LocalCluster of {args.workers} worker processes × 1 thread, {args.worker_memory} each; segment on "
        f"{device}, {args.patch}² patches; chunks of ~{args.target_mib:g} MiB; registration boxes {args.box}³ (2 per axis), linear resampling; stats on the exact "
        f"segmentation; phantom {phantom_texture() or 'without texture'}. A fresh cluster per step (peak RSS per step). Synthesis of each series "
        "(not in the totals): " + ", ".join(f"{r['setup_s']:.0f} s" for r in runs) + ".",
        "",
        *scaling_table(runs),
        "",
        f"**time per voxel, largest / smallest = {ratio:.2f}** (1.00 is linear; {top['voxels_per_s'] / 1e6:.2f} "
        f"Mvoxel/s end to end at {largest['voxels']:.3g} voxels). Registration converged on "
        + ", ".join(f"{r['converged']}/{r['shape'][0]}" for r in runs)
        + " timesteps: the boxes are spread over the evolving cell, not placed on its static electrode, so"
        " boxes over moving Li or the featureless gap fail to converge, and those that do disagree. The"
        " failure is reported and the timestep resampled anyway (the cost is the same); registration"
        " accuracy is measured in `register.md`.",
        "",
        f"## Projection: the second paper's data ({PAPER_VOLUMES} volumes × {PAPER_VOXELS:.3g} voxels = "
        f"{proj['voxels']:.3g} voxels, {proj['voxels'] * 4 / 1e12:.1f} TB as float32)",
        "",
        f"From the per-step rates of the largest series ({largest['voxels']:.3g} voxels), assuming the cost "
        "stays linear in the voxels and scales perfectly across nodes of this kind (not measured: a shared "
        "file system's bandwidth would cap it).",
        "",
        *proj_rows,
    ]
    return "\n".join(lines) + "\n", proj


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxels", type=float, default=1e9, help="voxels of the full series (fraction 1)")
    p.add_argument("--fractions", type=_fractions, default="1/64,1/8,1", help="sizes run, e.g. 1/64,1/8")
    p.add_argument("--t", type=int, default=4, help="timesteps")
    p.add_argument("--box", type=int, default=64, help="registration sub-volume edge (voxels)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-memory", default="1GiB")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--patch", type=int, default=128, help="segmentation patch edge")
    p.add_argument("--target-mib", type=float, default=32, help="chunk size of the stores (MiB)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--workdir", type=Path, help="folder for the series (default: a temporary one)")
    p.add_argument("--json", type=Path, help="also write the numbers here (default: results/scale.json)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--quick", action="store_true", help="4e6 voxels at 1/8 and 1, box 32, writes nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.voxels, args.fractions, args.box, args.no_write = 4e6, _fractions("1/8,1"), 32, True
    args.device, device = _device(args.device)
    runs = []
    from operando.config import config

    with config.set({"chunks.target_mib": args.target_mib}):
        for fraction in args.fractions:
            shape = series_shape(args.voxels * fraction, args.t)
            print(f"series {fraction}: {shape}", flush=True)
            root = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.workdir))
            try:
                runs.append({"fraction": str(fraction), **run_series(shape, args, root)})
            finally:
                shutil.rmtree(root, ignore_errors=True)
    text, proj = report(runs, args, device)
    print(text)
    client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = {"machine": machine_info(), "device": device, "client_peak_rss_mib": client_rss, "runs": runs}
    if not args.no_write:
        RESULTS.write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS}")
    if args.json or not args.no_write:
        path = args.json or RESULTS.with_suffix(".json")
        path.write_text(json.dumps({**doc, "projection": proj}, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
