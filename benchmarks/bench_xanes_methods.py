"""Alignment error and time of the XANES registration baselines, particle by particle.

A ``make_xanes`` phantom (9 particles, 3 debris, global jitter + a non-rigid walk
per particle + Poisson noise) is converted to absorbance lazily; for each particle
the ROI sequence over all scans and energies (acquisition order, F = S × E frames)
is cut around the particle's TRUE reference centre with a margin of its largest
motion + 2 px, so the particle never leaves its ROI. Only these ROIs are computed.

Each method of ``operando.analysis.xanes.baselines.register_stack`` then registers
the ROI sequence to frame ``--reference``; its alignment error is the RMS over
frames of |estimated − true shift| (px), the true shift being the particle's
``centre_px`` minus that in the reference frame. Frames a method could not
register (NaN) are counted and left out of the RMS. ``none`` is the error of not
aligning at all (the RMS particle motion). Numbers are the mean, median and worst
over particles; time is per frame, single-threaded.

Run::

    /work/venv/bin/python benchmarks/bench_xanes_methods.py                  # 3 scans × 143 energies
    /work/venv/bin/python benchmarks/bench_xanes_methods.py --energies 31 --scans 1 --no-write
    /work/venv/bin/python benchmarks/bench_xanes_methods.py --quick   # 1 scan × 16 energies, 128², no file
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown
from operando.analysis.xanes.baselines import METHODS, register_stack
from operando.io.xanes import lazy_absorbance
from operando.synth.xanes import make_xanes

RESULTS = Path(__file__).resolve().parent / "results" / "xanes_methods.md"


def particle_rois(args: argparse.Namespace):
    """Per particle: ROI frames (F, h, w), true shifts (F, 2) and the ROI margin (px), read ROI by ROI."""
    data, truth = make_xanes(
        shape=(args.scans, args.energies, args.size, args.size),
        seed=args.seed,
        n_particles=9,
        n_debris=3,
        jitter_px=args.jitter,
        walk_px=args.walk,
    )
    absorbance = lazy_absorbance(data["counts"].data, data["flat"].data, data["dark"].data)
    centre = truth["centre_px"].values.reshape(-1, truth.sizes["particle"], 2)  # (F, N, 2)
    reference = truth["reference_centre_px"].values
    for k in np.flatnonzero(~truth["is_debris"].values):
        motion = centre[:, k] - reference[k]
        half = int(np.ceil(1.35 * truth["radius_px"].values[k] + np.abs(motion).max() + 2))
        lo = np.maximum(np.round(reference[k]).astype(int) - half, 0)
        hi = np.minimum(np.round(reference[k]).astype(int) + half + 1, args.size)
        roi = absorbance[:, :, lo[0] : hi[0], lo[1] : hi[1]].compute()
        yield roi.reshape(-1, *roi.shape[2:]), motion - motion[args.reference], int(np.abs(motion).max() + 2)


def score(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """RMS alignment error (px) over the registered frames, and the count of failed frames."""
    error = np.linalg.norm(estimate - truth, axis=1)
    ok = np.isfinite(error)
    return float(np.sqrt(np.mean(error[ok] ** 2))) if ok.any() else float("nan"), int((~ok).sum())


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    rows = {m: {"rms": [], "failed": [], "seconds": [], "frames": []} for m in ("none", *args.methods)}
    for frames, truth, margin in particle_rois(args):
        rows["none"]["rms"].append(score(np.zeros_like(truth), truth)[0])
        for method in args.methods:
            start = time.perf_counter()
            shifts = register_stack(frames, method=method, reference=args.reference, margin=margin)
            rows[method]["seconds"].append(time.perf_counter() - start)
            rms, failed = score(shifts, truth)
            rows[method]["rms"].append(rms)
            rows[method]["failed"].append(failed)
            rows[method]["frames"].append(len(frames))
        done = ", ".join(f"{m} {r['rms'][-1]:.2f}" for m, r in rows.items())
        print(f"particle {len(rows['none']['rms'])}: {done}", file=sys.stderr)
    return rows


def table(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        f"Phantom {args.scans} scans × {args.energies} energies × {args.size}² px, seed {args.seed}, "
        f"9 particles, jitter σ {args.jitter} px, walk ≤ {args.walk} px, Poisson noise; "
        f"reference frame {args.reference}; ROI = true reference centre ± (1.35 r + motion + 2 px).",
        "",
        "| method | RMS error px, mean | median | worst particle | failed frames | ms / frame |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        rms = np.array(r["rms"])
        failed = f"{int(sum(r['failed']))} / {int(sum(r['frames']))}" if r["frames"] else "–"
        ms = f"{1e3 * sum(r['seconds']) / sum(r['frames']):.1f}" if r["frames"] else "–"
        label = "none (unaligned)" if method == "none" else method
        stats = f"{np.nanmean(rms):.2f} | {np.nanmedian(rms):.2f} | {np.nanmax(rms):.2f}"
        lines.append(f"| {label} | {stats} | {failed} | {ms} |")
    lines += ["| centre of mass (operando) | – | – | – | – | – |", "", _com_note()]
    return "\n".join(lines)


def _com_note() -> str:
    found = [m for m in ("track", "align") if importlib.util.find_spec(f"operando.analysis.xanes.{m}")]
    where = f" (`operando.analysis.xanes.{'`, `'.join(found)}` exist)" if found else ""
    return f"The centre-of-mass row is a placeholder: not measured by this script yet{where}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--energies", type=int, default=143)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.8)
    parser.add_argument("--walk", type=float, default=3.0)
    parser.add_argument("--reference", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 scan × 16 energies of 128², no results file")
    args = parser.parse_args()
    if args.quick:
        args.scans, args.energies, args.size, args.no_write = 1, 16, 128, True
    with dask.config.set(scheduler="synchronous"):
        text = table(run(args), args)
    print(text)
    if not args.no_write:
        RESULTS.write_text(
            f"# XANES registration baselines (`benchmarks/bench_xanes_methods.py`)\n\n{text}\n\n{machine_markdown()}\n"
        )


if __name__ == "__main__":
    main()
