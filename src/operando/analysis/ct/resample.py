"""Apply rigid transforms to a CT time series on disk, one output chunk at a time.

The registered image at reference-frame voxel ``q`` is timestep ``t`` at
``p = R (q - c) + c + s`` (see :mod:`operando.analysis.ct.register`). Each task owns
whole output chunks (planned and checked by
:func:`operando.engine.blockwise.plan_tasks`, so every chunk is written once): it
maps the chunk's corners through the transform, reads only the bounding box of
that source region (plus an interpolation margin) from the source zarr array, and
interpolates with :func:`scipy.ndimage.map_coordinates`. It does so in z-slabs of
the chunk, each reading its own box one source chunk at a time: a task holds the
output chunk, one slab's box and one decoded source chunk (~3.4× a chunk, against
6.2× when the whole box was read at once), whatever the volume.

Why not :func:`~operando.engine.blockwise.map_to_zarr`: it reads the chunk plus a
fixed halo at the *same* position; a rotated, shifted source region would need a
halo as large as the largest displacement anywhere in the volume on every side of
every chunk (several times the bytes read for large volumes). Here each chunk
reads its own box.

Interpolation: ``order=1`` (default) is exact blockwise, the box holds every
neighbour used. ``order=3`` prefilters the box (B-spline coefficients) rather than
the whole volume; with the margin of :data:`SPLINE_MARGIN` voxels the difference
decays as 0.27**margin (below 1e-5 of the local contrast). ``order=0`` is
nearest-neighbour, for labels. Voxels that map outside the source volume get
``fill_value`` (default NaN for floats, 0 for integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr
from scipy import ndimage

from operando.analysis.ct.register import AXES, estimate_transforms, rotation_matrix
from operando.engine.blockwise import plan_tasks, read_region
from operando.engine.cluster import compute_on
from operando.errors import RegistrationError, ShapeMismatchError
from operando.io.store import COMPLETE_ATTR, mark_complete, open_dataset, prepare_output

__all__ = ["SPLINE_MARGIN", "apply_transforms", "register_dataset", "voxel_maps"]

SPLINE_MARGIN = 8
_SLAB_VOXELS = 1 << 17  # output voxels interpolated at once (~34 bytes of temporaries each)
_READ_BYTES = 16 << 20  # most source bytes read at once (and at most a quarter of a chunk)
Region = tuple[slice, ...]


def voxel_maps(transforms: xr.Dataset, spacing_um: float, origin_um: Sequence[float]) -> np.ndarray:
    """Per-timestep affine maps in voxel indices: reference voxel q → source voxel ``A q + b``.

    Returns
    -------
    ndarray of shape (T, 3, 4)
        ``[A | b]`` for each timestep (z, y, x order).
    """
    origin = np.asarray(origin_um, dtype=np.float64)
    centre = transforms["centre_um"].values
    out = np.empty((transforms.sizes["time"], 3, 4))
    for t, (angles, shift) in enumerate(
        zip(transforms["angles_deg"].values, transforms["translation_um"].values, strict=True)
    ):
        rot = rotation_matrix(angles)
        out[t, :, :3] = rot
        out[t, :, 3] = (rot @ (origin - centre) + centre + shift - origin) / spacing_um
    return out


def _source_box(affine: np.ndarray, region: Region, shape: Sequence[int], margin: int) -> Region:
    """Bounding box (clipped to ``shape``) of the source voxels ``region`` (z, y, x) reads."""
    lo = np.array([s.start for s in region], dtype=np.float64)
    hi = np.array([s.stop - 1 for s in region], dtype=np.float64)
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1)
    mapped = affine[:, :3] @ corners + affine[:, 3:]
    start = np.floor(mapped.min(axis=1)).astype(int) - margin
    stop = np.floor(mapped.max(axis=1)).astype(int) + 1 + margin + 1
    return tuple(
        slice(int(np.clip(a, 0, n)), int(np.clip(b, 0, n)))
        for a, b, n in zip(start, stop, shape, strict=True)
    )


def _interpolate(
    box: np.ndarray,
    box_start: Sequence[int],
    affine: np.ndarray,
    region: Region,
    shape: Sequence[int],
    order: int,
    fill: float,
) -> np.ndarray:
    """Values of the source (``box`` read at ``box_start``) at the mapped voxels of ``region``.

    Coordinates are built a few z-planes at a time (:data:`_SLAB_VOXELS`, ~34 bytes
    of temporaries per voxel): for a whole ~96 MiB chunk at once they would be
    several times a worker's memory.
    """
    # Linear interpolation of float32 needs no float64 copy; a spline prefilter does.
    work = np.asarray(box, dtype=np.result_type(box.dtype, np.float32) if order <= 1 else np.float64)
    if order > 1:
        work = ndimage.spline_filter(work, order=order, mode="nearest")
    out = np.empty([s.stop - s.start for s in region], dtype=work.dtype)
    plane = out[0].size if out.size else 1
    step = max(1, _SLAB_VOXELS // plane)
    axes = [np.arange(s.start, s.stop, dtype=np.float64) for s in region]
    for z0 in range(0, out.shape[0], step):
        coords = _coordinates(affine, [axes[0][z0 : z0 + step], *axes[1:]])
        outside = np.any([(c < 0) | (c > n - 1) for c, n in zip(coords, shape, strict=True)], axis=0)
        # Minus whole numbers: exact, so the weights do not depend on where the box starts.
        coords -= np.asarray(box_start, dtype=np.float64)[:, None, None, None]
        values = ndimage.map_coordinates(work, coords, order=order, mode="nearest", prefilter=False)
        values[outside] = fill
        out[z0 : z0 + step] = values
    return out


def _coordinates(affine: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Source coordinates, shape (3, len(z), len(y), len(x)), of the grid ``axes`` (z, y, x).

    Element by element (no matrix product, whose rounding depends on the block
    sizes BLAS picks), so a voxel's coordinates do not depend on the slab it is in.
    """
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    coords = np.empty((3, z.size, y.size, x.size))
    for i in range(3):
        np.add(affine[i, 0] * z + affine[i, 1] * y, affine[i, 2] * x + affine[i, 3], out=coords[i])
    return coords


def _slabs(box: Region, region: Region, itemsize: int, read_bytes: int) -> list[Region]:
    """``region`` cut along z so that each slab's source box is about ``read_bytes``.

    ``box`` is the source box of the whole region: its bytes per output z-plane
    estimate a slab's.
    """
    z = region[0]
    per_plane = math.prod(b.stop - b.start for b in box) * itemsize / max(1, z.stop - z.start)
    step = max(1, int(read_bytes // per_plane)) if per_plane else max(1, z.stop - z.start)
    return [(slice(a, min(a + step, z.stop)), *region[1:]) for a in range(z.start, z.stop, step)]


def _resample_chunk(
    source: zarr.Array,
    t: int,
    affine: np.ndarray,
    region: Region,
    order: int,
    fill: float,
    dtype: np.dtype,
    read_bytes: int,
) -> np.ndarray:
    """Timestep ``t`` of ``source`` at the mapped voxels of ``region`` (z, y, x), slab by slab.

    Each z-slab reads only its own source box, so the memory is the output region
    plus one slab's box and one decoded source chunk, whatever the volume.
    """
    margin = 1 if order <= 1 else SPLINE_MARGIN
    shape = source.shape[1:]
    itemsize = 8 if order > 1 else np.result_type(source.dtype, np.float32).itemsize
    out = np.empty([s.stop - s.start for s in region], dtype=dtype)
    for slab in _slabs(_source_box(affine, region, shape, margin), region, itemsize, read_bytes):
        local = slice(slab[0].start - region[0].start, slab[0].stop - region[0].start)
        box = _source_box(affine, slab, shape, margin)
        if any(b.stop <= b.start for b in box):
            out[local] = fill
            continue
        block = read_region(source, (t, *box))
        out[local] = _interpolate(block, [b.start for b in box], affine, slab, shape, order, fill)
    return out


def _resample_task(
    source: zarr.Array,
    out: zarr.Array,
    region: Region,
    affine: Sequence[np.ndarray | None] | None,
    order: int,
    fill: float,
    *,
    read_bytes: int | None = None,
) -> int:
    """Compute and write one task region (whole output chunks) of one timestep; returns voxels written.

    ``read_bytes`` bounds the source box read at once (default :data:`_READ_BYTES`, at
    most a quarter of the region; see :func:`_resample_chunk`).
    """
    (t_slice, *space) = region
    if read_bytes is None:
        # A quarter of the region's float32 bytes is one byte per voxel.
        read_bytes = min(_READ_BYTES, math.prod(s.stop - s.start for s in space))
    for t in range(t_slice.start, t_slice.stop):
        if affine is None or affine[t] is None:
            values = read_region(source, (t, *space)).astype(out.dtype, copy=False)
        else:
            values = _resample_chunk(source, t, affine[t], tuple(space), order, fill, out.dtype, read_bytes)
        out[(slice(t, t + 1), *space)] = values[None]
    return math.prod(s.stop - s.start for s in region)


def apply_transforms(
    source: zarr.Array | str | Path,
    transforms: xr.Dataset,
    out: zarr.Array,
    *,
    order: int = 1,
    fill_value: float | None = None,
    spacing_um: float | None = None,
    origin_um: Sequence[float] = (0.0, 0.0, 0.0),
    apply_failed: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> int:
    """Resample every timestep of ``source`` into the reference frame, into ``out``.

    Parameters
    ----------
    source : zarr.Array or path of shape (T, Z, Y, X)
        The measured series; a path opens the array read-only.
    transforms : xarray.Dataset
        From :func:`~operando.analysis.ct.register.estimate_transforms`.
    out : zarr.Array of shape (T, Z, Y, X)
        Created by the caller; each of its chunks is written exactly once.
    order : {0, 1, 3}, keyword-only
        Nearest, linear (default) or cubic B-spline interpolation.
    fill_value : float, optional, keyword-only
        For voxels mapped outside the volume (default NaN for float outputs, else 0).
    spacing_um, origin_um : keyword-only
        Voxel size and the coordinate of voxel (0, 0, 0) (default: the transforms'
        ``voxel_size_um`` attribute, and 0).
    apply_failed : bool, keyword-only
        Apply transforms marked ``converged=False`` too (default: refuse).
    client : distributed.Client, optional, keyword-only
    quiet : bool, keyword-only
        Accepted for symmetry with the engine; no progress bar is drawn.

    Returns
    -------
    int
        Voxels written.

    Raises
    ------
    RegistrationError
        If a transform to apply did not converge and ``apply_failed`` is False.
    ShapeMismatchError
        If ``out`` and ``source`` differ in shape or ``order`` is not 0, 1 or 3.
    """
    source = zarr.open_array(str(source), mode="r") if not isinstance(source, zarr.Array) else source
    if tuple(out.shape) != tuple(source.shape) or order not in (0, 1, 3):
        raise ShapeMismatchError("out", f"shape {out.shape} for source {source.shape}, order {order}")
    failed = np.flatnonzero(~transforms["converged"].values)
    if failed.size and not apply_failed:
        raise RegistrationError(
            f"timestep {int(failed[0])}",
            "its registration did not converge, so it is not applied",
            remedy="Pass apply_failed=True to apply it anyway, or register again.",
        )
    spacing = float(spacing_um if spacing_um is not None else transforms.attrs["voxel_size_um"])
    maps = voxel_maps(transforms, spacing, origin_um)
    ref = int(transforms.attrs.get("reference_time_index", -1)) % source.shape[0]
    affine = [None if t == ref else maps[t] for t in range(source.shape[0])]
    fill = (np.nan if np.issubdtype(out.dtype, np.floating) else 0) if fill_value is None else fill_value
    regions = plan_tasks(out, task_shape=(1, *out.chunks[1:]))
    tasks = [dask.delayed(_resample_task)(source, out, r, affine, order, fill) for r in regions]
    done = compute_on(client, *tasks)
    return int(sum(done))


def register_dataset(
    input_path: str | Path,
    output_path: str | Path,
    *,
    reference: int = -1,
    order: int = 1,
    overwrite: bool = False,
    apply_failed: bool = False,
    client: Any | None = None,
    quiet: bool = True,
    **estimate_kwargs: Any,
) -> xr.Dataset:
    """Register the CT dataset at ``input_path`` and write it to ``output_path``.

    The output has the input's coordinates and attributes, ``intensity`` in the
    reference frame (chunked as the input), the transform variables
    (``angles_deg``, ``translation_um``, ``centre_um``, ``metric``, ``converged``,
    ``iterations``) and an attribute ``registration`` holding them as lists. It is
    marked complete only at the end. Extra keywords go to
    :func:`~operando.analysis.ct.register.estimate_transforms`; write the CSV with
    :func:`~operando.analysis.ct.register.write_transforms_csv`.

    Parameters
    ----------
    input_path : str or Path
        Complete operando CT dataset with ``intensity`` of shape (T, Z, Y, X); only read.
    output_path : str or Path
        New zarr store (checked before the registration starts).
    reference, order, overwrite, client, quiet : keyword-only
        See :func:`~operando.analysis.ct.register.estimate_transforms`,
        :func:`apply_transforms` and :func:`operando.io.store.prepare_output`.
    apply_failed : bool, keyword-only
        Resample timesteps whose estimate did not converge too (with
        ``on_failure="report"``; default: refuse, see :func:`apply_transforms`).

    Returns
    -------
    xarray.Dataset
        The transforms.

    Raises
    ------
    OutputExistsError
        If ``output_path`` exists (and not ``overwrite``) or overlaps the input.
    RegistrationError
        If a timestep's registration failed (see ``on_failure`` and ``apply_failed``).
    """
    ds = open_dataset(input_path)
    path = prepare_output(output_path, overwrite=overwrite, inputs=(Path(input_path),))
    transforms = estimate_transforms(ds, reference=reference, client=client, **estimate_kwargs)
    _write_template(ds, transforms, path)
    source = zarr.open_array(str(Path(input_path) / "intensity"), mode="r")
    # Chunks that map wholly outside the source are all fill value: zarr would skip
    # them, and the completeness check would then find them missing.
    out = zarr.open_array(str(path / "intensity"), mode="r+", config={"write_empty_chunks": True})
    origin = [float(ds[d][0]) for d in AXES]
    apply_transforms(
        source,
        transforms,
        out,
        order=order,
        origin_um=origin,
        apply_failed=apply_failed,
        client=client,
        quiet=quiet,
    )
    mark_complete(path)
    return transforms


def _write_template(ds: xr.Dataset, transforms: xr.Dataset, path: Path) -> None:
    """Write coordinates, attributes and the transforms, and ``intensity`` as an empty array.

    Only the input's chunk shape is kept: its other encodings (codecs, fill values)
    need not suit the output, and its completion marker must not be copied.
    """
    chunks = ds["intensity"].encoding.get("chunks") or ds["intensity"].data.chunksize
    # Variable-length strings: zarr v3 has no specification for fixed-width ones.
    variables = transforms.drop_attrs(deep=False).assign_coords(axis=np.array(AXES, dtype=object))
    template = xr.merge([ds[["intensity"]].drop_encoding(), variables], join="exact")
    template.attrs = {k: v for k, v in ds.attrs.items() if k != COMPLETE_ATTR}
    template.attrs["registration"] = _registration_attr(transforms)
    template.to_zarr(
        path,
        compute=False,
        zarr_format=3,
        consolidated=False,
        mode="w-",
        encoding={"intensity": {"chunks": tuple(chunks)}},
    )


def _registration_attr(transforms: xr.Dataset) -> dict[str, Any]:
    return {
        "reference_time_index": int(transforms.attrs["reference_time_index"]),
        "convention": transforms.attrs["convention"],
        "voxel_size_um": float(transforms.attrs["voxel_size_um"]),
        **{
            k: transforms[k].values.tolist()
            for k in ("angles_deg", "translation_um", "centre_um", "converged")
        },
    }
