"""``operando xanes run``: flags → one call of :func:`operando.analysis.xanes.pipeline.run_xanes`."""

from __future__ import annotations

import argparse
from pathlib import Path

from operando.engine.cluster import add_run_arguments, client_from_args

__all__ = ["add_xanes_verbs"]

_METHODS = ("com", "template-abs", "template-rel", "phase", "sift", "optical-flow")


def add_xanes_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add ``operando xanes ...`` to the top-level verbs."""
    xanes = verbs.add_parser("xanes", help="the TXM-XANES pipeline (detect, track, align, edge maps)")
    steps = xanes.add_subparsers(dest="step", required=True, metavar="STEP")
    p = steps.add_parser("run", help="detect → track → align → edge maps of every particle into one folder")
    p.add_argument("input", type=Path, help="XANES dataset (.zarr) with counts/flat/dark or absorbance")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument(
        "--method",
        default="com",
        choices=_METHODS,
        help="com: per-particle centre of mass (default); the others are whole-ROI registration baselines",
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="weights (.safetensors) of a DualUNet or CycleGAN: positions are the centres of its particle masks",
    )
    p.add_argument("--min-size", type=int, metavar="PX", help="smaller objects are debris (px)")
    p.add_argument("--scan", type=int, default=0, help="scan whose post-edge mean is used for detection")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result.zarr")
    add_run_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    import pandas as pd

    from operando.analysis.xanes.pipeline import run_xanes

    with client_from_args(args) as client:
        out = run_xanes(
            args.input,
            args.output,
            method=args.method,
            min_size_px=args.min_size,
            scan_for_detection=args.scan,
            model=args.model,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    edge = pd.read_csv(out["edge"]).pivot(index="particle", columns="scan", values="edge_energy_ev")
    rejected = ", ".join(f"{n} {why}" for why, n in out["particles"].rejected.items()) or "none"
    print(f"{len(out['particles'])} particles found (rejected: {rejected})")
    shift = (edge.iloc[:, -1] - edge.iloc[:, 0]).round(3)
    print("edge shift first → last scan (eV):")
    print(pd.DataFrame({"first_ev": edge.iloc[:, 0].round(3), "shift_ev": shift}).to_string())
    print(f"wrote {args.output}")
