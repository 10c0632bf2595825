"""Accuracy and memory of the micro-CT pipeline on synthetic cells with known truth.

accuracy
    A cell that evolves over charge and discharge (pits, deposited and
    redeposited Li, dendrites, swelling), without rigid motion so that the
    segmentation is measured alone (registration: ``bench_register.py``). A small
    2D model is trained on a handful of labelled x cross-sections per labelled
    timestep, as in the paper; ``operando ct segment`` labels the whole series and
    ``cell_statistics`` reduces it. Reported: per-class IoU on the unlabelled
    slices against the paper's (electrode 0.97, pit 0.87, deposited Li 0.79,
    dendrite 0.69); class volumes against the truth (goal within 3 % for classes
    above 1000 voxels) and effective thickness (goal within one voxel). The default
    cell is 256 voxels thick so that its features have the paper's size in voxels
    (1.33 µm): electrodes ~79 voxels (paper ~100 µm = 75), the deposited layer up
    to ~16 (paper 32 µm = 24); at 128 they are half as thick, and a fixed boundary
    error of a few tenths of a voxel weighs twice as much in a layer's volume.
memory
    register → segment → stats of a series several times larger than a worker's
    memory limit on a LocalCluster: wall time per step, voxels/s and peak worker RSS.
    The cell evolves and has a textured electrode (``texture_rms``); it is
    registered on the stripping electrode below its deepest pit (``static_region``).

Run::

    /work/venv/bin/python benchmarks/bench_ct.py --section accuracy
    /work/venv/bin/python benchmarks/bench_ct.py --section memory --size 800 --worker-memory 1GiB
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown
from _rss import run_sampled

HERE = Path(__file__).resolve().parent
PAPER_IOU = {"electrode": 0.97, "pit": 0.87, "deposited": 0.79, "dendrite": 0.69}


def _label_files(cell: Path, every: int, times: list[int], *, first: int, stem: str = "labels") -> list[Path]:
    """Every ``every``-th x-slice of the truth from ``first`` on, as label TIFFs ``{stem}_t{t}.tif`` (value + 1)."""
    import tifffile

    from operando.io import open_dataset

    truth = open_dataset(cell, group="truth").labels
    files = []
    for t in times:
        sparse = np.zeros(truth.shape[1:], np.uint8)
        sparse[:, :, first::every] = truth[t].values[:, :, first::every] + 1
        files.append(cell.parent / f"{stem}_t{t}.tif")
        tifffile.imwrite(files[-1], sparse, photometric="minisblack")
    return files


def _train(cell: Path, files: list[Path], times: list[int], args: argparse.Namespace) -> tuple[Path, float]:
    from operando.io import open_dataset
    from operando.models.labels import open_label_tiffs
    from operando.models.training import TrainingConfig, save_result, train
    from operando.synth.ct import CT_CLASSES

    image = open_dataset(cell).intensity.data
    labels = open_label_tiffs(files, image_shape=image.shape, n_classes=len(CT_CLASSES), times=times)
    config = TrainingConfig(
        classes=CT_CLASSES,
        axis=2,
        preset=args.preset,
        context=args.context,
        dice_weight=args.dice_weight,
        boundary_weight=args.boundary_weight,
        patch=args.train_patch,
        steps_per_round=60,
        patience=10_000,  # the whole budget: the learning rate anneals over it
        time_limit_s=args.time_limit,
        device=args.device,
    )
    start = time.perf_counter()
    result = train(image, labels, config)
    seconds = time.perf_counter() - start
    weights, _ = save_result(result, cell.parent / "model.safetensors")
    return weights, seconds


def _device_name(device: str) -> str:
    import os

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPU cores"


def _iou_table(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    from operando.models.metrics import SegmentationMetrics
    from operando.synth.ct import CT_CLASSES

    m = SegmentationMetrics.from_arrays(pred[..., keep], truth[..., keep] + 1, classes=CT_CLASSES)
    return dict(m.iou)


def accuracy(args: argparse.Namespace) -> str:
    from operando.analysis.ct.pipeline import segment
    from operando.io import open_dataset
    from operando.synth import synth_ct

    shape = (4, args.z, args.size, args.size)
    lines = [
        f"## accuracy: cell {shape}, every {args.every}th x-slice labelled at t = 1, 2, 3; "
        f"{args.dendrites} dendrites; 2D model with {args.context} neighbouring slices per side (2.5D context)",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cell = synth_ct(
            Path(tmp) / "cell.zarr",
            shape=shape,
            seed=3,
            n_dendrites=args.dendrites,
            max_angle_deg=0,
            max_shift_voxels=0,
        )
        times = [1, 2, 3]
        training = _label_files(cell, args.every, times, first=args.every // 2)
        weights, seconds = _train(cell, training, times, args)
        # Reference slices for the error-adjusted volumes: the training slices, and as many others
        # that the model never saw (labelled for checking).
        references = {
            "training": training,
            "check": _label_files(cell, args.every, times, first=0, stem="check"),
        }
        truth = open_dataset(cell, group="truth")
        keep = np.ones(shape[3], bool)
        keep[args.every // 2 :: args.every] = False
        lines += [f"training {seconds:.0f} s ({args.preset} preset on {_device_name(args.device)})", ""]
        # The same model with and without flip test-time augmentation, side by side.
        for tta in (False, True):
            start = time.perf_counter()
            seg = segment(
                cell, weights, Path(tmp) / f"seg{int(tta)}.zarr", axis="x", tta=tta, device=args.device
            )
            seg_s = time.perf_counter() - start
            pred = open_dataset(seg).labels.values  # class index 0..K-1; the truth below is 1..K
            iou = _iou_table(pred, truth.labels.values, keep)
            title = "with `--tta` (probabilities averaged over the patch flips)" if tta else "plain"
            lines += [f"### segmentation {title}: {seg_s:.1f} s", ""]
            lines += ["| class | IoU (unlabelled slices) | paper |", "|---|---|---|"]
            lines += [f"| {c} | {v:.3f} | {PAPER_IOU.get(c, '')} |" for c, v in iou.items()]
            lines += ["", *_volume_rows(seg, truth, references), ""]
    return "\n".join(lines)


def _volume_rows(seg: Path, truth, references: dict[str, list[Path]]) -> list[str]:
    """Measured and error-adjusted class volumes against the truth, with the count of misses."""
    from operando.analysis.ct.adjusted import adjusted_volumes
    from operando.analysis.ct.stats import cell_statistics
    from operando.io import open_dataset
    from operando.models.labels import open_label_tiffs

    voxel = 1.33
    ds = open_dataset(seg)
    got = cell_statistics(ds.labels, voxel_size_um=voxel, normal_axis="z", plating_side="high")
    want_labels = truth.labels.assign_attrs(ds.labels.attrs)
    want = cell_statistics(want_labels, voxel_size_um=voxel, normal_axis="z", plating_side="high")
    adjusted = {
        name: adjusted_volumes(
            ds.labels, open_label_tiffs(files, image_shape=ds.labels.shape, n_classes=5), got
        )
        for name, files in references.items()
    }
    head = " | ".join(f"adjusted, {name} slices ± SE" for name in adjusted)
    rows = [
        f"| time (min) | class | truth voxels | measured voxels | volume error | {head} | thickness error (voxels) |"
    ]
    rows.append("|---" * (6 + len(adjusted)) + "|")
    misses = dict.fromkeys(["measured", *adjusted], 0)
    big = 0
    for t in range(got.sizes["time"]):
        for c in got["class"].values[1:]:
            n_true = int(want.voxels[t].sel({"class": c}))
            big += n_true >= 1000
            errors = {"measured": (int(got.voxels[t].sel({"class": c})) - n_true, 0.0)}
            for name, adj in adjusted.items():
                if got.time.values[t] in adj.time.values:
                    one = adj.sel({"time": got.time.values[t], "class": c})
                    errors[name] = (float(one.adjusted_voxels) - n_true, float(one.adjusted_voxels_se))
            cells = {k: _error_cell(*e, n_true) for k, e in errors.items()}
            for k, (diff, _) in errors.items():
                misses[k] += _missed(diff, n_true)
            dthick = float(got.thickness_um[t].sel({"class": c}) - want.thickness_um[t].sel({"class": c}))
            adj_cells = " | ".join(cells.get(name, "") for name in adjusted)
            rows.append(
                f"| {float(got.time[t]):.0f} | {c} | {n_true} | {int(got.voxels[t].sel({'class': c}))} |"
                f" {cells['measured']} | {adj_cells} | {dthick / voxel:+.3f} |"
            )
    summary = ", ".join(f"{k} {big - v} of {big}" for k, v in misses.items())
    return [*rows, "", f"Class volumes above 1000 voxels within 3 % of the truth: {summary}."]


def _missed(diff: float, n_true: int) -> bool:
    """The goal: a class above 1000 voxels within 3 % of its true volume."""
    return n_true >= 1000 and abs(diff) > 0.03 * n_true


def _error_cell(diff: float, se: float, n_true: int) -> str:
    """``+1.2 %`` (``± 0.4`` with a standard error), ✗ past 3 % on a class above 1000 voxels."""
    if not n_true:
        return "+nan %" if not diff else f"{diff:+.0f} voxels"
    flag = " ✗" if _missed(diff, n_true) else ""
    spread = f" ± {100 * se / n_true:.1f}" if se else ""
    return f"{100 * diff / n_true:+.1f}{spread} %{flag}"


def memory(args: argparse.Namespace) -> str:
    """register → segment → stats of a (T, N/2, N, N) series on 2 workers of --worker-memory each."""
    import dask

    from operando.analysis.ct.pipeline import register, segment, statistics
    from operando.analysis.ct.register import RegistrationOptions
    from operando.config import config
    from operando.io import open_dataset
    from operando.models.networks import ResidualUNet
    from operando.models.weights import save_model
    from operando.synth import synth_ct
    from operando.synth.ct import CT_CLASSES
    from operando.synth.labels import truth_segmentation

    shape = (args.t, args.size // 2, args.size, args.size)
    static = _static_depth(shape, seed=5)
    nbytes = 4 * int(np.prod(shape))
    rows = [
        "| step | wall | Mvoxel/s | peak worker RSS (sampled every 0.2 s) | worker limit | workers lost |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        # Setup, not measured: the phantom's own tasks run in this process.
        with dask.config.set(scheduler="threads"):
            cell = synth_ct(root / "cell.zarr", shape=shape, seed=5, texture_rms=args.texture)
            truth_seg = truth_segmentation(cell, root / "truth_seg.zarr")
        setup = time.perf_counter() - start
        net = ResidualUNet.preset("small", spatial_dims=2, out_channels=len(CT_CLASSES))
        weights = save_model(root / "m.safetensors", net, classes=CT_CLASSES)
        steps = {
            "register": lambda client: register(
                cell,
                root / "reg.zarr",
                static_region=f"z=0:{static}",
                sub_volume_size=(static, args.box, args.box),
                sub_volumes=(1, 2, 2),
                # The slab is thin: a 3-voxel motion is a large part of it.
                options=RegistrationOptions(max_shift_fraction=0.5),
                client=client,
                on_failure="report",
                apply_failed=True,  # memory is measured here, accuracy in the table below
            ),
            f"segment (small model, {args.patch}² patches)": lambda client: segment(
                root / "reg.zarr", weights, root / "seg.zarr", device="cpu", patch=args.patch, client=client
            ),
            "stats": lambda client: statistics(truth_seg, root / "stats", plating_side="high", client=client),
        }
        results = {}
        for name, fn in steps.items():
            row, results[name] = _measured_step(name, fn, shape, args.worker_memory)
            rows.append(row)
            print(row, flush=True)
        accuracy = _registration_errors(results["register"], open_dataset(cell, group="truth"))
    head = (
        f"## memory: series {shape} float32 = {nbytes / 2**30:.2f} GiB, "
        f"2 workers × {args.worker_memory} ({nbytes / _bytes(args.worker_memory):.1f}× a worker's limit)"
    )
    text = (
        f"Evolving cell, electrode texture {args.texture:g}; registered on z = 0:{static} (below the "
        f"deepest pit), boxes {static} × {args.box}², 1 × 2 × 2. Chunks of "
        f"~{config.get('chunks.target_mib')} MiB; a fresh cluster per step; synthesis of the series and "
        f"its exact segmentation (setup, in the main process): {setup:.0f} s. Stats run on the exact "
        "segmentation (an untrained model's labels have no cell to measure)."
    )
    return "\n".join([head, "", text, "", *rows, "", *accuracy])


def _measured_step(name: str, fn, shape: tuple[int, ...], limit: str) -> tuple[str, object]:
    """Run ``fn(client)`` on a fresh cluster of 2 workers, their RSS sampled: (table row, result)."""
    step = run_sampled(fn, workers=2, memory_limit=limit)
    rate = np.prod(shape) / step.wall_s / 1e6
    row = f"| {name} | {step.wall_s:.1f} s | {rate:.2f} | {step.peak_rss / 2**20:.0f} MiB | {limit} | {step.lost} |"
    return row, step.result


def _static_depth(shape: tuple[int, ...], *, seed: int, margin: float = 4.0) -> int:
    """Voxels of stripping electrode below the deepest pit bottom, less ``margin`` for the motion."""
    from operando.synth.ct import cell_geometry

    times = np.linspace(0.0, 240.0, shape[0])
    cell = cell_geometry(shape, seed=seed, times_min=times, charge_end_min=120.0)
    pits = cell.pits
    bottoms = cell.z_strip + cell.rough_strip(pits[:, 0], pits[:, 1]) - pits[:, 3]
    return int(np.floor(bottoms.min() - margin))


def _registration_errors(transforms, truth) -> list[str]:
    """Per timestep: converged, angle error (°) and largest corner error (voxels) against the truth."""
    from operando.analysis.ct.register import rotation_matrix

    voxel = float(transforms.attrs["voxel_size_um"])
    shape = np.array([truth.sizes[d] for d in ("z", "y", "x")])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T * voxel
    rows = ["| time | converged | angle error ° | corner error voxels |", "|---|---|---|---|"]
    for t in range(transforms.sizes["time"]):
        got, want = (
            (corners - np.asarray(c)) @ rotation_matrix(a).T + np.asarray(c) + np.asarray(s)
            for a, s, c in (
                (transforms.angles_deg[t], transforms.translation_um[t], transforms.centre_um),
                (truth.angles_deg[t], truth.translation_um[t], truth.rotation_centre_um),
            )
        )
        # Plain arrays: the two "axis" coordinates need not align as labels.
        angle = float(np.abs(transforms.angles_deg[t].values - truth.angles_deg[t].values).max())
        corner = float(np.linalg.norm(got - want, axis=1).max() / voxel)
        rows.append(f"| {t} | {bool(transforms.converged[t])} | {angle:.3f} | {corner:.3f} |")
    return rows


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=("accuracy", "memory"), required=True)
    p.add_argument("--size", type=int, default=96, help="lateral edge (accuracy) or N (memory)")
    p.add_argument(
        "--z",
        type=int,
        default=256,
        help="accuracy: cell thickness in voxels (256: the paper's voxel geometry)",
    )
    p.add_argument("--every", type=int, default=8, help="accuracy: label every n-th x-slice")
    p.add_argument("--time-limit", type=float, default=600.0, help="accuracy: training limit in seconds")
    p.add_argument("--context", type=int, default=2, help="accuracy: neighbouring slices per side (2.5D)")
    p.add_argument("--preset", default="small", help="accuracy: ResidualUNet preset")
    p.add_argument(
        "--dice-weight", type=float, default=1.0, help="accuracy: Dice term of the loss (0: cross-entropy)"
    )
    p.add_argument(
        "--train-patch", type=int, default=32, help="accuracy: training (and inference) patch edge"
    )
    p.add_argument(
        "--boundary-weight",
        type=float,
        default=0.0,
        help="accuracy: extra cross-entropy weight of voxels at a class boundary",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="accuracy: training and inference"
    )
    # The default density puts 3 dendrites (a few hundred voxels) on 96², too few for a
    # stable IoU; 36 is the density of the five-class training test (16 on 64²).
    p.add_argument("--dendrites", type=int, default=36, help="accuracy: dendrites in the cell")
    p.add_argument("--t", type=int, default=4, help="memory: timesteps")
    p.add_argument("--box", type=int, default=128, help="memory: registration sub-volume edge (y, x)")
    p.add_argument("--texture", type=float, default=0.05, help="memory: electrode texture rms")
    p.add_argument("--worker-memory", default="1GiB")
    p.add_argument("--patch", type=int, default=128, help="memory: segmentation patch edge")
    p.add_argument("--target-mib", type=float, default=32, help="memory: chunk size of the stores")
    p.add_argument("--workdir", type=Path, help="memory: folder for the series (default: a temporary one)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.section == "accuracy":
        text = accuracy(args)
    else:
        from operando.config import config

        with config.set({"chunks.target_mib": args.target_mib}):
            text = memory(args)
    print(text)
    if not args.no_write:
        out = HERE / "results" / f"ct_{args.section}.md"
        out.write_text(f"# CT pipeline: {args.section}\n\n{machine_markdown()}\n\n{text}\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
