"""Rigid registration: operando's sub-volume estimate + blockwise apply vs SimpleITK in memory.

A phantom cell frozen at the end of charge (``make_ct``, only the rigid motion
changes between timesteps) is written once as an operando dataset. Then, each in
a fresh process so that peak RSS is its own:

operando  ``estimate_transforms`` on sub-volume boxes (read from zarr, combined
          by a Kabsch fit of their corners), then ``apply_transforms`` into a new
          zarr array, one output chunk per task.
sitk      the whole reference and timestep volumes in memory, one SimpleITK
          registration with the same metric (correlation), optimizer
          (regular-step gradient descent, physical-shift scales), pyramid and
          sampling, then ``sitk.Resample`` of the whole volume.

Accuracy against the phantom's truth: the angle error (degrees, largest of the
three axes) and the largest displacement error over the volume corners (voxels).

``--phantom evolving``: the cell evolves over charge and discharge (pits, Li
layers, dendrites, swelling) and its electrodes carry a static texture
(``texture_rms=0.05``); operando registers boxes on the stripping electrode below
the deepest pit (``static_region``), SimpleITK the whole volumes as before.

Run::

    /work/venv/bin/python benchmarks/bench_register.py                  # 3 × 128 × 192², writes results
    /work/venv/bin/python benchmarks/bench_register.py --phantom evolving   # adds its section
    /work/venv/bin/python benchmarks/bench_register.py --shape 3 64 96 96 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "register.md"
PACKAGES = ("operando", "numpy", "zarr", "dask", "scipy", "SimpleITK")
#: operando contenders: metric samples per level and box (the default, and the
#: whole volume's budget shared by the 4 default boxes).
CONTENDERS = {"operando": 200_000, "operando 50k/box": 50_000}
EVOLVING_MARK = "<!-- evolving phantom -->"
TEXTURE_RMS = 0.05


def static_depth(shape: tuple[int, ...], seed: int = 0, margin: float = 4.0) -> int:
    """Voxels of the evolving phantom's stripping electrode below its deepest pit, less ``margin``."""
    from operando.synth.ct import cell_geometry

    cell = cell_geometry(shape, seed=seed, times_min=np.linspace(0.0, 240.0, shape[0]), charge_end_min=120.0)
    bottoms = cell.z_strip + cell.rough_strip(cell.pits[:, 0], cell.pits[:, 1]) - cell.pits[:, 3]
    return int(np.floor(bottoms.min() - margin))


def make_store(path: Path, shape: tuple[int, ...], target_mib: float, phantom: str) -> None:
    """Write a frozen or evolving phantom of ``shape`` (its last timestep the reference) and its truth."""
    from operando.io.store import mark_complete, write_dataset
    from operando.synth.ct import make_ct

    if phantom == "evolving":
        data, truth = make_ct(shape=shape, seed=0, texture_rms=TEXTURE_RMS)
    else:
        times = 1000.0 - 0.001 * np.arange(shape[0])[::-1]
        data, truth = make_ct(shape=shape, seed=0, times_min=times, charge_end_min=1000.0)
    write_dataset(data, path, target_mib=target_mib, complete=False)
    write_dataset(truth, path, group="truth", complete=False)
    mark_complete(path)


def run_operando(path: str, box: int, per_axis: list[int], max_samples: int, static: int) -> dict:
    import dask
    import zarr

    from operando.analysis.ct.register import RegistrationOptions, estimate_transforms
    from operando.analysis.ct.resample import apply_transforms
    from operando.io import open_dataset

    ds = open_dataset(path)
    source = zarr.open_array(str(Path(path) / "intensity"), mode="r")
    out = zarr.create_array(
        str(Path(path).parent / f"operando_{max_samples}"),
        shape=source.shape,
        chunks=source.chunks,
        dtype="f4",
    )
    with dask.config.set(scheduler="threads"):
        start = time.perf_counter()
        if static:
            # A thin slab of static electrode: a 3-voxel motion is a large part of it.
            options = RegistrationOptions(max_samples=max_samples, max_shift_fraction=0.5)
            where = {"static_region": f"z=0:{static}", "sub_volume_size": (static, box, box)}
        else:
            options = RegistrationOptions(max_samples=max_samples)
            where = {"sub_volume_size": box}
        est = estimate_transforms(ds, sub_volumes=per_axis, options=options, **where)
        middle = time.perf_counter()
        apply_transforms(source, est, out)
    return {
        "estimate_s": middle - start,
        "apply_s": time.perf_counter() - middle,
        "angles_deg": est.angles_deg.values.tolist(),
        "translation_um": est.translation_um.values.tolist(),
        "centre_um": est.centre_um.values.tolist(),
        "converged": est.converged.values.tolist(),
    }


def _sitk_method(n_voxels: int, spacing: float):
    """The settings of ``RegistrationOptions()`` written out in plain SimpleITK."""
    import SimpleITK as sitk

    from operando.analysis.ct.register import RegistrationOptions

    opts = RegistrationOptions()
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    fractions = [min(1.0, opts.max_samples * f**3 / n_voxels) for f in opts.shrink_factors]
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(fractions, 42)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=opts.learning_rate_voxels * spacing,
        minStep=opts.min_step_voxels * spacing,
        numberOfIterations=opts.max_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-12,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(opts.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(opts.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def run_sitk(path: str) -> dict:
    import SimpleITK as sitk
    import zarr
    from scipy.spatial.transform import Rotation

    source = zarr.open_array(str(Path(path) / "intensity"), mode="r")
    spacing = float(zarr.open_group(path, mode="r").attrs["voxel_size_um"])
    start = time.perf_counter()
    volumes = [
        sitk.GetImageFromArray(np.asarray(source[t], dtype=np.float32)) for t in range(source.shape[0])
    ]
    for image in volumes:
        image.SetSpacing([spacing] * 3)
    fixed = volumes[-1]
    centre = (np.array(source.shape[:0:-1]) - 1) / 2 * spacing
    angles, shifts, resample_s = [], [], 0.0
    for moving in volumes[:-1]:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre.tolist())
        method = _sitk_method(int(np.prod(source.shape[1:])), spacing)
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
        tick = time.perf_counter()
        sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float("nan"))
        resample_s += time.perf_counter() - tick
        matrix = np.array(transform.GetMatrix()).reshape(3, 3)[::-1, ::-1]
        angles.append(Rotation.from_matrix(matrix).as_euler("XYZ", degrees=True).tolist())
        shifts.append(list(transform.GetTranslation())[::-1])
    return {
        "estimate_s": time.perf_counter() - start - resample_s,
        "apply_s": resample_s,
        "angles_deg": [*angles, [0.0] * 3],
        "translation_um": [*shifts, [0.0] * 3],
        "centre_um": centre[::-1].tolist(),
    }


def child(kind: str, path: str, box: int, per_axis: list[int], static: int) -> dict:
    # Both import the same libraries first: their RSS is not the contenders' work.
    import SimpleITK  # noqa: F401

    import operando.analysis.ct.resample  # noqa: F401

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "sitk":
        result = run_sitk(path)
    else:
        result = run_operando(path, box, per_axis, CONTENDERS[kind], static)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["work_mb"] = result["peak_rss_mb"] - base
    return result


def errors(result: dict, truth, shape: tuple[int, ...], voxel: float) -> list[tuple[float, float]]:
    """(largest angle error in degrees, largest corner displacement error in voxels) per moving timestep."""
    from operando.analysis.ct.register import rotation_matrix

    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[1:]], indexing="ij")).reshape(3, -1).T * voxel
    rows = []
    for t in range(shape[0] - 1):
        mapped = []
        for angles, shift, centre in (
            (result["angles_deg"][t], result["translation_um"][t], result["centre_um"]),
            (truth.angles_deg.values[t], truth.translation_um.values[t], truth.rotation_centre_um.values),
        ):
            centre = np.asarray(centre)
            mapped.append((corners - centre) @ rotation_matrix(angles).T + centre + np.asarray(shift))
        angle = np.abs(np.subtract(result["angles_deg"][t], truth.angles_deg.values[t])).max()
        rows.append((float(angle), float(np.linalg.norm(mapped[0] - mapped[1], axis=1).max() / voxel)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(3, 128, 192, 192))
    parser.add_argument("--box", type=int, default=96, help="sub-volume edge (voxels)")
    parser.add_argument("--per-axis", type=int, nargs=3, default=(1, 2, 2), help="boxes along z, y, x")
    parser.add_argument("--target-mib", type=float, default=4.0, help="chunk size of the store")
    parser.add_argument("--phantom", choices=("frozen", "evolving"), default="frozen")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--static", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.box, list(args.per_axis), args.static)))
        return
    from operando.io import open_dataset

    shape = tuple(args.shape)
    args.static = static_depth(shape) if args.phantom == "evolving" else 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cell.zarr"
        make_store(store, shape, args.target_mib, args.phantom)
        truth = open_dataset(store, group="truth")[
            ["angles_deg", "translation_um", "rotation_centre_um"]
        ].load()
        voxel = float(open_dataset(store).attrs["voxel_size_um"])
        chunks = open_dataset(store).intensity.encoding["chunks"]
        extra = ["--box", str(args.box), "--per-axis", *map(str, args.per_axis), "--static", str(args.static)]
        rows = {}
        for kind in (*CONTENDERS, "sitk"):
            cmd = [sys.executable, __file__, "--child", kind, str(store), *extra]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[kind] = json.loads(out.strip().splitlines()[-1])
    text = _table(rows, {k: errors(r, truth, shape, voxel) for k, r in rows.items()}, shape, chunks, args)
    print(text)
    if not args.no_write:
        _write(text, args.phantom)


def _write(text: str, phantom: str) -> None:
    """The frozen results head ``RESULTS``; the evolving section follows :data:`EVOLVING_MARK`."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    frozen, _, evolving = old.partition(EVOLVING_MARK)
    machine = machine_markdown(PACKAGES)
    if phantom == "evolving":
        evolving = f"\n## Evolving phantom\n\n{text}\n\n{machine}\n"
    else:
        frozen = f"# Registration benchmark (`benchmarks/bench_register.py`)\n\n{text}\n\n{machine}\n"
    RESULTS.write_text(frozen + (EVOLVING_MARK + evolving if evolving else ""))


def _table(rows: dict, accuracy: dict, shape, chunks, args) -> str:
    steps = range(shape[0] - 1)
    if args.phantom == "evolving":
        what = (
            f"Evolving phantom (texture {TEXTURE_RMS}) {' × '.join(map(str, shape))} float32, chunks "
            f"{tuple(chunks)}; operando boxes {args.static} × {args.box}² on z = 0:{args.static} (below "
            f"the deepest pit), {' × '.join(map(str, args.per_axis))} (z × y × x); sitk: whole volumes"
        )
    else:
        what = (
            f"Frozen phantom {' × '.join(map(str, shape))} float32, chunks {tuple(chunks)}; operando boxes "
            f"{args.box}³, {' × '.join(map(str, args.per_axis))} (z × y × x)"
        )
    lines = [
        f"{what}; angle error = largest of the three axes; residual = largest corner displacement "
        "error; converged = operando's own verdict.",
        "",
        "| contender | converged | estimate s | apply s | total s | peak RSS MB | above imports MB | "
        + " | ".join(f"t{t} angle err ° | t{t} residual vox" for t in steps)
        + " |",
        "|---" * (7 + 2 * len(steps)) + "|",
    ]
    for kind, r in rows.items():
        acc = " | ".join(f"{a:.3f} | {d:.3f}" for a, d in accuracy[kind])
        total = r["estimate_s"] + r["apply_s"]
        lines.append(
            f"| {kind} | {_converged(r)} | {r['estimate_s']:.1f} | {r['apply_s']:.1f} | {total:.1f} | {r['peak_rss_mb']:.0f} | {r['work_mb']:.0f} | {acc} |"
        )
    sk = rows["sitk"]
    lines.append("")
    for kind in CONTENDERS:
        op = rows[kind]
        ratio_t = (op["estimate_s"] + op["apply_s"]) / (sk["estimate_s"] + sk["apply_s"])
        ratio_m = op["peak_rss_mb"] / sk["peak_rss_mb"]
        # Where the imports' peak exceeds the work, the work adds nothing to the peak.
        ratio_w = f"{op['work_mb'] / sk['work_mb']:.2f}" if sk["work_mb"] > 0 else "n/a (sitk 0 MB)"
        lines.append(
            f"**{kind} / sitk: time {ratio_t:.2f}, peak RSS {ratio_m:.2f}, RSS above imports {ratio_w}**  "
        )
    return "\n".join(lines)


def _converged(result: dict) -> str:
    flags = result.get("converged")
    return "n/a" if flags is None else ("all" if all(flags) else f"{sum(flags)}/{len(flags)}")


if __name__ == "__main__":
    main()
