"""``operando ct register|segment|stats|run``: flags → one call of :mod:`operando.analysis.ct.pipeline`."""

from __future__ import annotations

import argparse
from pathlib import Path

from operando.argtypes import int_list
from operando.engine.cluster import add_run_arguments, client_from_args

__all__ = ["add_ct_verbs", "add_tta_argument"]


def add_ct_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add ``operando ct ...`` to the top-level verbs."""
    ct = verbs.add_parser("ct", help="the operando micro-CT pipeline (register, segment, stats, run)")
    steps = ct.add_subparsers(dest="step", required=True, metavar="STEP")
    _add_register(steps)
    _add_segment(steps)
    _add_stats(steps)
    _add_run(steps)


def _io(p: argparse.ArgumentParser, what: str, output: str) -> None:
    p.add_argument("input", type=Path, help=what)
    p.add_argument("-o", "--output", type=Path, required=True, help=output)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _add_register(steps: argparse._SubParsersAction) -> None:
    p = steps.add_parser("register", help="rigidly register every timestep to a reference timestep")
    _io(p, "CT dataset (.zarr)", "registered dataset (.zarr); transforms go to <name>.transforms.csv")
    _register_flags(p)
    add_run_arguments(p)
    p.set_defaults(run=_run_register)


def _register_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", type=int, default=-1, help="reference time index (default -1, the last)")
    p.add_argument(
        "--mode",
        default="sub_volumes",
        choices=("sub_volumes", "downsampled"),
        help="estimate on full-resolution sub-volumes (default) or a block-averaged whole volume",
    )
    p.add_argument("--sub-volume-size", type=int, default=300, help="sub-volume edge in voxels")
    p.add_argument(
        "--static-region", metavar="CROP", help="place the sub-volumes on static material, e.g. z=0:120"
    )
    p.add_argument("--shrink", type=int, default=4, help="block-mean factor of --mode downsampled")
    p.add_argument("--order", type=int, default=1, choices=(1, 3), help="interpolation: 1 linear, 3 cubic")


def _add_segment(steps: argparse._SubParsersAction) -> None:
    p = steps.add_parser("segment", help="label a registered series with a trained model")
    _io(p, "registered dataset (.zarr)", "labels dataset (.zarr)")
    _segment_flags(p)
    add_run_arguments(p)
    p.set_defaults(run=_run_segment)


def _segment_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument(
        "--axis",
        default=None,
        choices=("z", "y", "x"),
        help="2D models: slices across this axis (default: the model's training axis, else x)",
    )
    add_tta_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def add_tta_argument(p: argparse.ArgumentParser) -> None:
    """``--tta``: of every verb that runs a segmentation model (``operando predict``, ``ct segment``, ``ct run``)."""
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the model over the flips of each patch "
        "(4x the inference in 2D, 8x in 3D; measured in benchmarks/results/ct_accuracy.md)",
    )


def _add_stats(steps: argparse._SubParsersAction) -> None:
    p = steps.add_parser("stats", help="volumes, thicknesses, flattened maps, edges and plots of labels")
    _io(p, "labels dataset (.zarr), e.g. from `operando ct segment`", "output folder")
    p.add_argument("--normal-axis", help="electrode normal (default: the dataset's, else z)")
    _stats_flags(p)
    add_run_arguments(p)
    p.set_defaults(run=_run_stats)


def _stats_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop", help="ROI in voxels, e.g. y=12:-12,x=12:-12")
    p.add_argument(
        "--plating-side",
        default="auto",
        choices=("auto", "high", "low"),
        help="side of the plating electrode along the normal (auto: where Li deposits during charge)",
    )
    far = p.add_argument_group("Faraday comparison (optional)")
    far.add_argument("--current-density", type=float, metavar="MA_CM2", help="current density in mA/cm²")
    far.add_argument("--current-on", metavar="SEGMENTS", help="current-on minutes, e.g. 0:10,30:40")
    far.add_argument("--area", type=float, metavar="CM2", help="electrode area in cm² (default: the ROI)")
    ref = p.add_argument_group("error-adjusted volumes (optional)")
    ref.add_argument(
        "--reference-labels",
        type=Path,
        action="append",
        metavar="TIFF",
        help="labelled reference slices of one timestep (repeat), as for `operando train`: "
        "0 unlabelled, k the class k-1; best labelled for checking, not for training",
    )
    ref.add_argument(
        "--reference-labels-time",
        type=int_list,
        metavar="T,...",
        help="time index of each --reference-labels file (default: *_t{index} names)",
    )
    ref.add_argument(
        "--reference-labels-var",
        metavar="NAME",
        help="label variable (time, z, y, x) of one zarr --reference-labels store",
    )
    ref.add_argument(
        "--reference-axis",
        default="x",
        choices=("z", "y", "x"),
        help="axis of the reference slices (default x)",
    )


def _add_run(steps: argparse._SubParsersAction) -> None:
    p = steps.add_parser("run", help="register → segment → stats into one folder")
    _io(p, "CT dataset (.zarr)", "output folder")
    p.add_argument("--reference", type=int, default=-1, help="reference time index (default -1, the last)")
    _segment_flags(p)
    _stats_flags(p)
    add_run_arguments(p)
    p.set_defaults(run=_run_all)


def _current(args: argparse.Namespace):
    from operando.analysis.ct.faraday import parse_segments
    from operando.analysis.ct.pipeline import CellCurrent
    from operando.errors import ConfigError

    if args.current_density is None and args.current_on is None:
        return None
    if args.current_density is None or args.current_on is None:
        raise ConfigError(
            "--current-density/--current-on",
            "the Faraday comparison needs both",
            remedy="Pass both, or neither.",
        )
    return CellCurrent(args.current_density, parse_segments(args.current_on), area_cm2=args.area)


def _reference(args: argparse.Namespace):
    from operando.analysis.ct.pipeline import ReferenceSlices

    if not args.reference_labels:
        return None
    times = args.reference_labels_time and tuple(args.reference_labels_time)
    return ReferenceSlices(
        tuple(args.reference_labels),
        times=times,
        variable=args.reference_labels_var,
        axis=args.reference_axis,
    )


def _run_register(args: argparse.Namespace) -> None:
    from operando.analysis.ct.pipeline import register, transforms_csv_path

    with client_from_args(args) as client:
        transforms = register(
            args.input,
            args.output,
            reference=args.reference,
            mode=args.mode,
            sub_volume_size=args.sub_volume_size,
            static_region=args.static_region,
            shrink=args.shrink,
            order=args.order,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(transforms[["angles_deg", "translation_um"]].to_dataframe().unstack("axis").to_string())
    print(f"wrote {args.output} and {transforms_csv_path(args.output)}")


def _run_segment(args: argparse.Namespace) -> None:
    from operando.analysis.ct.pipeline import segment

    with client_from_args(args) as client:
        out = segment(
            args.input,
            args.model,
            args.output,
            axis=args.axis,
            tta=args.tta,
            device=args.device,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(f"wrote {out}")


def _run_stats(args: argparse.Namespace) -> None:
    from operando.analysis.ct.pipeline import statistics

    current = _current(args)
    with client_from_args(args) as client:
        stats = statistics(
            args.input,
            args.output,
            normal_axis=args.normal_axis,
            crop=args.crop,
            plating_side=args.plating_side,
            current=current,
            reference=_reference(args),
            overwrite=args.overwrite,
            client=client,
        )
    print(stats.thickness_um.to_pandas().round(3).to_string())
    print(f"wrote {args.output}")


def _run_all(args: argparse.Namespace) -> None:
    from operando.analysis.ct.pipeline import run_ct

    current = _current(args)
    with client_from_args(args) as client:
        paths = run_ct(
            args.input,
            args.model,
            args.output,
            reference=args.reference,
            axis=args.axis,
            crop=args.crop,
            plating_side=args.plating_side,
            current=current,
            reference_slices=_reference(args),
            tta=args.tta,
            device=args.device,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
