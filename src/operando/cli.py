"""The ``operando`` command line.

Each verb is a thin translation of flags into one call of the Python API; every
error operando raises on purpose is printed as one line naming the file, the rule
and the fix, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from operando import __version__
from operando.analysis.ct.commands import add_ct_verbs, add_tta_argument
from operando.analysis.xanes.commands import add_xanes_verbs
from operando.argtypes import int_list
from operando.engine.cluster import add_run_arguments, client_from_args
from operando.errors import ConfigError, InputNotFoundError, OperandoError
from operando.report import add_report_verb

__all__ = ["main"]

# src/operando/cli.py → the repository root of a source checkout (benchmarks/ is not packaged)
_CHECKOUT = Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``operando`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    with _cli_logging(quiet=getattr(args, "quiet", False)):
        try:
            args.run(args)
        except OperandoError as err:
            print(f"operando: error: {err}", file=sys.stderr)
            return 2
    return 0


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when it writes, not when it was made.

    Callers that swap ``sys.stderr`` (pytest's capture, notebooks) would otherwise
    leave later log lines writing to a closed stream.
    """

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def _cli_logging(*, quiet: bool) -> Iterator[None]:
    """operando's own log lines (e.g. a step's final report) on stderr; warnings only with --quiet.

    The logger is restored afterwards, so ``main`` called from Python (a notebook,
    a test) leaves no handler behind to print into a later, quiet call.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("operando: %(message)s"))
    logger = logging.getLogger("operando")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], level, logger.propagate = saved
        logger.setLevel(level)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="operando", description="Out-of-core operando X-ray imaging of batteries."
    )
    parser.add_argument("--version", action="version", version=f"operando {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_synth(verbs)
    _add_ingest(verbs)
    _add_train(verbs)
    _add_predict(verbs)
    add_ct_verbs(verbs)
    add_xanes_verbs(verbs)
    _add_export(verbs)
    add_report_verb(verbs)
    _add_bench(verbs)
    info = verbs.add_parser(
        "info", help="describe a dataset: variables, chunks, codec, size, coordinates, completeness"
    )
    info.add_argument("dataset", type=Path)
    info.set_defaults(run=_run_info)
    return parser


def _add_synth(verbs: argparse._SubParsersAction) -> None:
    synth = verbs.add_parser("synth", help="make synthetic operando data with known ground truth")
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, dims in (("ct", "T,Z,Y,X"), ("xanes", "S,E,Y,X")):
        p = kinds.add_parser(kind, help=f"synthetic {kind.upper()} data ({dims})")
        p.add_argument(
            "-o", "--output", type=Path, required=True, help="a .zarr dataset, or a folder for --format tiff"
        )
        p.add_argument("--shape", type=int_list, help=f"array shape {dims}")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--format",
            choices=("zarr", "tiff"),
            default="zarr",
            help="zarr: a dataset with the truth in its 'truth' group; tiff: raw beamline-style files to ingest",
        )
        p.add_argument("--overwrite", action="store_true")
        if kind == "ct":
            p.add_argument(
                "--texture-rms",
                type=float,
                default=0.0,
                help="static electrode texture (relative rms, e.g. 0.05) for registration on static material",
            )
        p.set_defaults(run=_run_synth)
    p = kinds.add_parser(
        "labels",
        help="sparse training labels from a phantom's truth, as if a few cross-sections were labelled",
    )
    p.add_argument(
        "truth", type=Path, help="dataset with the truth labels (synth ct: cell.zarr --group truth)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for labels_t{index}.tif")
    p.add_argument("--group", help="sub-group holding the labels, e.g. truth")
    p.add_argument("--every", type=int, default=8, help="label one slice in N (default 8)")
    p.add_argument(
        "--first", type=int, help="first labelled slice (default N // 2; another gives check slices)"
    )
    p.add_argument("--times", type=int_list, help="labelled time indices (default all)")
    p.add_argument("--axis", default="x", choices=("z", "y", "x"))
    p.set_defaults(run=_run_synth_labels)


def _add_ingest(verbs: argparse._SubParsersAction) -> None:
    ingest = verbs.add_parser("ingest", help="convert beamline files into an operando dataset, out of core")
    kinds = ingest.add_subparsers(dest="kind", required=True, metavar="KIND")
    ct = kinds.add_parser("ct", help="CT volumes, one per timestep")
    ct.add_argument(
        "inputs", nargs="+", type=Path, help="3D TIFF / HDF5 / .npy / zarr array / folder of 2D slices"
    )
    ct.add_argument("--voxel-size", type=float, required=True, help="voxel size in µm")
    ct.add_argument(
        "--times", type=_float_list, help="minutes per timestep: 0,10,20 or a text file, one per line"
    )
    _add_common_ingest(ct)
    ct.set_defaults(run=_run_ingest_ct)
    xanes = kinds.add_parser("xanes", help="TXM-XANES frames: scans × energies, scan-major")
    xanes.add_argument(
        "--sample", type=Path, required=True, help="stack of sample frames, or a folder of .xrm files"
    )
    xanes.add_argument(
        "--flat", type=Path, required=True, help="stack of reference (flat) frames, or a folder of .xrm"
    )
    xanes.add_argument("--dark", type=Path, help="dark frame(s), averaged")
    xanes.add_argument(
        "--energies", type=Path, help="text file, one energy in eV per line (not needed for .xrm)"
    )
    xanes.add_argument("--scans", type=int, help="number of scans (default: frames / energies)")
    xanes.add_argument("--pixel-size", type=float, help="pixel size in µm (not needed for .xrm)")
    _add_common_ingest(xanes)
    xanes.set_defaults(run=_run_ingest_xanes)


def _add_common_ingest(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="output .zarr dataset")
    p.add_argument("--dataset-path", help="dataset inside HDF5 inputs, e.g. /exchange/data")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    add_run_arguments(p)


def _add_train(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "train", help="train a Residual U-Net on sparse labels (0 = unlabelled, 1..K = --classes)"
    )
    p.add_argument("image", type=Path, help="dataset (.zarr) with a (time, z, y, x) image")
    p.add_argument(
        "--labels",
        type=Path,
        action="append",
        required=True,
        help="label TIFF of one timestep (repeat), or a zarr store with --labels-var",
    )
    p.add_argument(
        "--classes", type=_name_list, required=True, help="names of labels 1..K, e.g. background,pit"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument(
        "--labels-time", type=int_list, help="time index of each --labels file (default: *_t{index} names)"
    )
    p.add_argument("--labels-var", help="label variable (time, z, y, x) of a zarr --labels store")
    p.add_argument("--variable", default="intensity", help="image variable (default intensity)")
    p.add_argument("--preset", default="small", choices=("small", "paper"), help="network size")
    p.add_argument("--axis", default="x", choices=("z", "y", "x"), help="axis of the labelled slices")
    p.add_argument("--3d", dest="three_d", action="store_true", help="3D patches instead of 2D slices")
    p.add_argument(
        "--context",
        type=int,
        default=0,
        metavar="K",
        help="2D: also feed K neighbouring slices per side along --axis as input channels (2.5D)",
    )
    p.add_argument("--patch", type=int, help="patch edge in voxels (default 64, 128 for paper)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--steps-per-round", type=int, default=50, help="training steps between validations")
    p.add_argument(
        "--rounds",
        type=int,
        default=10_000,
        metavar="N",
        help="at most N rounds; the learning rate anneals over N rounds or --time-limit, whichever ends first",
    )
    p.add_argument("--patience", type=int, default=10, help="stop after this many rounds without improvement")
    p.add_argument(
        "--time-limit", type=float, default=3600.0, metavar="S", help="wall-clock limit in seconds"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="data-parallel training processes (default: one per visible GPU, one on the CPU)",
    )
    p.add_argument("--init", type=Path, help="start from these weights (same classes and architecture)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations or intensity jitter")
    p.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=_run_train)


def _add_predict(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "predict", help="predict labels with a trained model (drafts to correct: label = draft + 1)"
    )
    p.add_argument("image", type=Path, help="dataset (.zarr) with a (time, z, y, x) image")
    p.add_argument("--model", type=Path, required=True, help="weights file (.safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output dataset (.zarr)")
    p.add_argument("--variable", default="intensity", help="image variable (default intensity)")
    p.add_argument(
        "--axis",
        default=None,
        choices=("z", "y", "x"),
        help="2D models: slices across this axis (default: the model's training axis, else x)",
    )
    p.add_argument("--patch", type=int, help="patch edge (default: the model's training patch)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--blend", default="mean", choices=("mean", "gaussian"))
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (float16)")
    add_tta_argument(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    add_run_arguments(p)
    p.set_defaults(run=_run_predict)


def _add_export(verbs: argparse._SubParsersAction) -> None:
    """Add ``operando export DATASET -o VIEW.ome.zarr`` to the top-level verbs."""
    p = verbs.add_parser("export", help="write a CT or XANES dataset as an OME-Zarr image for napari/Fiji")
    p.add_argument("dataset", type=Path, help="operando dataset (.zarr)")
    p.add_argument("-o", "--output", type=Path, required=True, help="OME-Zarr store, e.g. view.ome.zarr")
    p.add_argument("--variable", help="image variable (default intensity, absorbance or counts)")
    p.add_argument("--labels", type=Path, help="dataset with a label variable of the same shape")
    p.add_argument("--labels-group", help="group of --labels holding it, e.g. truth")
    p.add_argument("--labels-var", default="labels", help="label variable (default labels)")
    p.add_argument("--levels", type=int, help="pyramid levels (default: until the smallest side < 64)")
    p.add_argument("--ngff", default="0.5", choices=("0.5", "0.4"), help="0.5 (zarr v3) or 0.4 (zarr v2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OME-Zarr store")
    add_run_arguments(p)
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from operando.io.export import export_ome_zarr

    with client_from_args(args) as client:
        out = export_ome_zarr(
            args.dataset,
            args.output,
            variable=args.variable,
            labels=args.labels,
            labels_group=args.labels_group,
            labels_variable=args.labels_var,
            levels=args.levels,
            ngff=args.ngff,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(f"wrote {out}")


def _add_bench(verbs: argparse._SubParsersAction) -> None:
    """Add ``operando bench [--suite quick|full] -o DIR``: ``python -m benchmarks`` of a source checkout."""
    p = verbs.add_parser("bench", help="run the benchmark suite of a source checkout: JSON + Markdown table")
    p.add_argument("--suite", choices=("quick", "full"), default="quick", help="quick: smoke sizes (default)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for suite.json, suite.md, runs/")
    p.add_argument("--only", help="comma-separated benchmark names (default: all)")
    p.add_argument(
        "--benchmarks",
        type=Path,
        default=_CHECKOUT / "benchmarks",
        help="benchmarks folder (default: the checkout's)",
    )
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    import importlib.util

    runner = args.benchmarks / "_suite.py"
    if not runner.is_file():
        raise InputNotFoundError(
            runner,
            "the benchmark suite is absent: it lives in a source checkout of operando, not in the installed package",
            remedy="Clone the repository and run `operando bench` from its editable install, or pass --benchmarks.",
        )
    spec = importlib.util.spec_from_file_location("operando_benchmark_suite", runner)
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite  # its dataclasses look their module up there
    spec.loader.exec_module(suite)
    argv = ["--suite", args.suite, "-o", str(args.output), *(["--only", args.only] if args.only else [])]
    if code := suite.main(argv):
        raise SystemExit(code)


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names, got {text!r}")
    return names


def _float_list(text: str) -> tuple[float, ...]:
    path = Path(text)
    try:
        if path.is_file():
            return tuple(float(v) for v in path.read_text().split() if v)
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers or a file of them, got {text!r}"
        ) from None


def _run_info(args: argparse.Namespace) -> None:
    from operando.io.info import describe

    print(describe(args.dataset))


def _run_synth(args: argparse.Namespace) -> None:
    from operando import synth

    writers: dict[tuple[str, str], Callable[..., Path]] = {
        ("ct", "zarr"): synth.synth_ct,
        ("ct", "tiff"): synth.synth_ct_raw,
        ("xanes", "zarr"): synth.synth_xanes,
        ("xanes", "tiff"): synth.synth_xanes_raw,
    }
    params = {"seed": args.seed} | ({"shape": args.shape} if args.shape else {})
    if getattr(args, "texture_rms", 0.0):
        params["texture_rms"] = args.texture_rms
    out = writers[args.kind, args.format](args.output, overwrite=args.overwrite, **params)
    print(f"wrote synthetic {args.kind} ({args.format}) to {out}")


def _run_synth_labels(args: argparse.Namespace) -> None:
    from operando.synth.labels import sparse_labels

    paths = sparse_labels(
        args.truth,
        args.output,
        every=args.every,
        first=args.first,
        times=args.times,
        axis=args.axis,
        group=args.group,
    )
    print(f"wrote {len(paths)} label files to {args.output}")


def _run_ingest_ct(args: argparse.Namespace) -> None:
    from operando.io.ingest import ingest_ct

    if args.times is not None and len(args.times) != len(args.inputs):
        raise ConfigError(
            "--times",
            f"{len(args.times)} times for {len(args.inputs)} volumes",
            remedy="Give one time per input volume.",
        )
    with client_from_args(args) as client:
        out = ingest_ct(
            args.inputs,
            args.output,
            voxel_size_um=args.voxel_size,
            times_min=args.times,
            dataset_path=args.dataset_path,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(f"wrote {out}")


def _run_ingest_xanes(args: argparse.Namespace) -> None:
    from operando.io.ingest import ingest_xanes, read_energies

    energies = None if args.energies is None else read_energies(args.energies)
    with client_from_args(args) as client:
        out = ingest_xanes(
            args.sample,
            args.flat,
            args.output,
            energies_ev=energies,
            dark=args.dark,
            scans=args.scans,
            pixel_size_um=args.pixel_size,
            dataset_path=args.dataset_path,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(f"wrote {out}")


def _open_labels(args: argparse.Namespace, shape: tuple[int, ...]) -> Any:
    from operando.models.labels import open_labels

    return open_labels(
        args.labels,
        image_shape=shape,
        n_classes=len(args.classes),
        variable=args.labels_var,
        times=args.labels_time,
    )


def _run_train(args: argparse.Namespace) -> None:
    from operando.errors import DatasetLayoutError, OutputExistsError
    from operando.io.store import open_dataset
    from operando.models.training import TrainingConfig, save_result, train

    if args.output.exists() and not args.overwrite:
        raise OutputExistsError(args.output, "output path exists already")
    ds = open_dataset(args.image)
    if args.variable not in ds or ds[args.variable].dims != ("time", "z", "y", "x"):
        raise DatasetLayoutError(f"{args.image}:{args.variable}", "no variable with dims (time, z, y, x)")
    image = ds[args.variable].data
    labels = _open_labels(args, image.shape)
    config = TrainingConfig(
        classes=args.classes,
        spatial_dims=3 if args.three_d else 2,
        axis="zyx".index(args.axis),
        context=args.context,
        processes=args.processes,
        preset=args.preset,
        patch=args.patch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        steps_per_round=args.steps_per_round,
        max_rounds=args.rounds,
        patience=args.patience,
        time_limit_s=args.time_limit,
        seed=args.seed,
        augment=not args.no_augment,
        device=args.device,
        init=args.init,
    )
    echo = None if args.quiet else (lambda line: print(f"operando: {line}", file=sys.stderr))
    result = train(image, labels, config, progress=echo)
    weights, curve = save_result(result, args.output, provenance={"image": f"{args.image}:{args.variable}"})
    print(f"test split ({len(result.split.test)} slices):")
    print(result.test.table())
    print(f"wrote {weights} and {curve}")


def _run_predict(args: argparse.Namespace) -> None:
    from operando.models.drafts import predict_drafts

    with client_from_args(args) as client:
        out = predict_drafts(
            args.image,
            args.model,
            args.output,
            variable=args.variable,
            axis=args.axis,
            patch=args.patch,
            overlap=args.overlap,
            blend=args.blend,
            probabilities=args.probabilities,
            tta=args.tta,
            batch_size=args.batch_size,
            device=args.device,
            overwrite=args.overwrite,
            client=client,
            quiet=args.quiet,
        )
    print(f"wrote {out} (labels = class index; as training labels use labels + 1)")


if __name__ == "__main__":
    raise SystemExit(main())
