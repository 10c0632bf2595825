"""Export an operando dataset as an OME-Zarr multiscale image for viewers (napari, Fiji, BDV).

Axes (NGFF allows at most one time axis, one channel-or-custom axis, then 2–3 space axes)
    CT ``(time, z, y, x)`` → ``t`` (type ``time``), ``z``, ``y``, ``x`` (``space``, µm).
    XANES ``(scan, energy, y, x)`` → ``scan`` (type ``time``: scans are successive in
    operando time), ``energy`` (custom type ``energy``, not ``channel``: viewers split
    channels into one layer each, but show a custom axis as a slider), ``y``, ``x``.
    A non-spatial axis carries its physical step (``minute``, ``electronvolt``) only
    when its coordinates are evenly spaced; otherwise its scale is the index and the
    coordinates are kept under the root attribute ``operando``.
Pyramid
    Level k halves y/x (and z for CT) k times: block mean for the image, block mode
    for labels (ties go to the lower class value), odd remainders trimmed, so the
    scale of level k is exactly ``2**k`` voxels and its translation puts each pixel at
    the centre of the voxels it summarises.
Completeness
    Everything is written to a hidden ``.NAME.partial`` sibling, renamed at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from operando.engine.progress import compute_with_progress
from operando.errors import ConfigError, DatasetLayoutError, OutputExistsError, ShapeMismatchError
from operando.io.layout import CT_DIMS, XANES_DIMS, label_classes
from operando.io.store import open_dataset

if TYPE_CHECKING:
    from ome_zarr.format import Format

__all__ = ["export_ome_zarr"]

_FORMATS = {"0.5": "FormatV05", "0.4": "FormatV04"}  # ome_zarr.format classes, imported on use
_MIN_SIDE = 64
_UNITS = {"time": "minute", "energy": "electronvolt"}  # by operando dim
# RGBA per class value; background (0) transparent so the image shows through.
_PALETTE = [(0, 0, 0, 0), (31, 119, 180, 255), (44, 160, 44, 255), (214, 39, 40, 255), (255, 127, 14, 255)]


def export_ome_zarr(
    dataset: str | Path,
    output: str | Path,
    *,
    variable: str | None = None,
    labels: str | Path | None = None,
    labels_group: str | None = None,
    labels_variable: str = "labels",
    levels: int | None = None,
    ngff: str = "0.5",
    overwrite: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> Path:
    """Write ``dataset`` (CT or XANES) as an OME-Zarr multiscale image at ``output``.

    Parameters
    ----------
    dataset : str or Path
        operando dataset with ``intensity`` of shape (T, Z, Y, X) or ``absorbance`` /
        ``counts`` of shape (S, E, Y, X).
    output : str or Path
        OME-Zarr store to create, e.g. ``view.ome.zarr``.
    variable : str, optional, keyword-only
        Image variable (default ``intensity``, else ``absorbance``, else ``counts``).
    labels, labels_group, labels_variable : keyword-only
        Dataset (and group) holding a uint8 label variable of the image's shape with
        CF ``flag_meanings``; written as the label image ``labels/<labels_variable>``.
    levels : int, optional, keyword-only
        Pyramid levels (default: until the smallest downsampled side is below 64).
    ngff : {"0.5", "0.4"}, keyword-only
        OME-Zarr version: 0.5 is zarr v3, 0.4 is zarr v2 (older Fiji plugins).
    overwrite : bool, keyword-only
        Replace an existing OME-Zarr store at ``output``.
    client : distributed.Client, optional, keyword-only
        Compute on its cluster; without one, dask's threaded scheduler.
    quiet : bool, keyword-only
        No progress bar.

    Returns
    -------
    Path
        ``output``.
    """
    output, fmt = Path(output), _format(ngff)
    _check_output(output, overwrite=overwrite, inputs=(Path(dataset), *([Path(labels)] if labels else [])))
    image = _image_variable(open_dataset(dataset), dataset, variable)
    axes, spatial = _axes(image)
    n_levels = _n_levels(image.shape, spatial, levels)
    label_var = None if labels is None else _label_variable(labels, labels_group, labels_variable, image)
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    root = zarr.open_group(str(partial), mode="w-", zarr_format=fmt.zarr_format)
    writes = _write_image(root, image, axes, spatial, n_levels, fmt)
    if label_var is not None:
        writes += _write_labels(root, label_var, axes, spatial, n_levels, fmt, labels_variable)
    compute_with_progress(dask.delayed(writes), name=output.name, client=client, quiet=quiet)
    root.attrs["operando"] = _provenance(image, dataset, axes)
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    return output


def _format(ngff: str) -> Format:
    if ngff not in _FORMATS:
        raise ConfigError("--ngff", f"unknown OME-Zarr version {ngff!r}", remedy="Use --ngff 0.5 or 0.4.")
    import ome_zarr.format

    return getattr(ome_zarr.format, _FORMATS[ngff])()


def _check_output(output: Path, *, overwrite: bool, inputs: Sequence[Path]) -> None:
    for src in inputs:
        if output.resolve() == src.resolve():
            raise OutputExistsError(
                output, "the output would overwrite the input", remedy="Choose a new path."
            )
    if not output.exists():
        return
    if not overwrite:
        raise OutputExistsError(output, "output path exists already")
    if not any((output / marker).is_file() for marker in ("zarr.json", ".zgroup")):
        raise OutputExistsError(
            output,
            "exists and is not a zarr store, so --overwrite will not delete it",
            remedy="Remove it yourself or choose another output path.",
        )


def _image_variable(ds: xr.Dataset, where: str | Path, variable: str | None) -> xr.DataArray:
    names = [variable] if variable else [n for n in ("intensity", "absorbance", "counts") if n in ds]
    found = [n for n in names if n in ds and ds[n].dims in (CT_DIMS, XANES_DIMS)]
    if not found:
        layout = {str(n): ds[n].dims for n in ds.data_vars}
        raise DatasetLayoutError(
            where,
            f"no CT (time, z, y, x) or XANES (scan, energy, y, x) image among {names or 'the variables'}; "
            f"found {layout}",
            remedy="Export a CT dataset (intensity) or a XANES dataset (absorbance or counts), or pass --variable.",
        )
    return ds[found[0]]


def _label_variable(path: str | Path, group: str | None, name: str, image: xr.DataArray) -> xr.DataArray:
    ds = open_dataset(path, group=group)
    where = f"{path}{'/' + group if group else ''}:{name}"
    if name not in ds or "flag_meanings" not in ds[name].attrs:
        raise DatasetLayoutError(where, "no label variable with CF flag_meanings")
    var = ds[name]
    if var.shape != image.shape or not np.issubdtype(var.dtype, np.integer):
        raise ShapeMismatchError(
            where,
            f"labels {var.dtype} {var.shape} do not match the image {image.shape}",
            remedy="Pass labels of the exported dataset's shape (the same timesteps and voxels).",
        )
    return var


def _axes(image: xr.DataArray) -> tuple[list[dict[str, str]], tuple[int, ...]]:
    """NGFF axes of ``image`` and the indices of the downsampled (spatial) axes."""
    if image.dims == CT_DIMS:
        first = [{"name": "t", "type": "time"}]
    else:
        first = [{"name": "scan", "type": "time"}, {"name": "energy", "type": "energy"}]
    spatial = tuple(range(len(first), image.ndim))
    axes = first + [{"name": str(image.dims[i]), "type": "space", "unit": "micrometer"} for i in spatial]
    for ax, dim in zip(first, image.dims, strict=False):
        if _grid(image, dim) is not None:
            ax["unit"] = _UNITS[str(dim)]
    return axes, spatial


def _grid(image: xr.DataArray, dim: Any) -> tuple[float, float] | None:
    """(step, origin) of an evenly spaced coordinate; None for scan indices or uneven spacing."""
    values = image[dim].values.astype(np.float64)
    if dim == "scan":
        return None
    if values.size < 2:
        return 1.0, float(values[0])
    steps = np.diff(values)
    regular = steps[0] > 0 and np.allclose(steps, steps[0], rtol=1e-6)
    return (float(steps[0]), float(values[0])) if regular else None


def _n_levels(shape: tuple[int, ...], spatial: tuple[int, ...], levels: int | None) -> int:
    smallest = min(shape[i] for i in spatial)
    if levels is None:
        n = 1
        while smallest >= _MIN_SIDE and smallest // 2 >= 1:
            smallest //= 2
            n += 1
        return n
    if levels < 1 or smallest >> (levels - 1) < 1:
        raise ConfigError(
            "--levels",
            f"{levels} levels of a {shape} image (smallest downsampled side {smallest} voxels)",
            remedy=f"Pass 1 to {smallest.bit_length()} levels.",
        )
    return levels


def _pyramid(data: da.Array, spatial: tuple[int, ...], n_levels: int, *, labels: bool) -> list[da.Array]:
    """Levels 0..n-1 of ``data``: each halves the ``spatial`` axes of the one before."""
    factors = {i: 2 for i in spatial}
    out = [data]
    for _ in range(1, n_levels):
        prev = out[-1]
        if labels:
            out.append(da.coarsen(_block_mode, prev, factors, trim_excess=True))
        else:
            out.append(_block_mean(prev, factors))
    return out


def _block_mean(data: da.Array, factors: dict[int, int]) -> da.Array:
    mean = da.coarsen(np.mean, data, factors, trim_excess=True, dtype=np.float64)
    if np.issubdtype(data.dtype, np.integer):
        mean = da.rint(mean)
    return mean.astype(data.dtype)


def _block_mode(blocks: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Most frequent value over ``axis`` (the within-block axes ``da.coarsen`` adds)."""
    values = np.unique(blocks)
    counts = np.stack([(blocks == v).sum(axis=axis) for v in values])
    return values[np.argmax(counts, axis=0)].astype(blocks.dtype)


def _transforms(image: xr.DataArray, spatial: tuple[int, ...], n_levels: int) -> list[list[dict]]:
    """Exact ``scale`` + ``translation`` per level: voxel size × 2**k, centred on the summarised voxels."""
    grids = [_grid(image, dim) or (1.0, 0.0) for dim in image.dims]
    levels = []
    for k in range(n_levels):
        f = [2**k if i in spatial else 1 for i in range(image.ndim)]
        scale = [step * fi for (step, _), fi in zip(grids, f, strict=True)]
        shift = [origin + step * (fi - 1) / 2 for (step, origin), fi in zip(grids, f, strict=True)]
        levels.append([{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}])
    return levels


def _storage(pyramid: list[da.Array], spatial: tuple[int, ...]) -> list[dict[str, Any]]:
    """Chunks per level: one frame deep in time, 64³ in space (a viewer reads a slice cheaply)."""
    edge = 64 if len(spatial) == 3 else 256
    options = []
    for level in pyramid:
        chunks = [min(edge, n) if i in spatial else 1 for i, n in enumerate(level.shape)]
        if len(spatial) == 2:
            chunks[1] = min(16, level.shape[1])
        options.append({"chunks": tuple(chunks)})
    return options


def _write_image(
    root: zarr.Group,
    image: xr.DataArray,
    axes: list[dict[str, str]],
    spatial: tuple[int, ...],
    n_levels: int,
    fmt: Format,
) -> list:
    from ome_zarr.writer import write_multiscale

    pyramid = _pyramid(image.data, spatial, n_levels, labels=False)
    writes = write_multiscale(
        pyramid, root, fmt=fmt, axes=axes, storage_options=_storage(pyramid, spatial), compute=False
    )
    _set_multiscales(root, image, spatial, n_levels, fmt, axes, name=str(image.name), method="mean")
    return writes


def _write_labels(
    root: zarr.Group,
    labels: xr.DataArray,
    axes: list[dict[str, str]],
    spatial: tuple[int, ...],
    n_levels: int,
    fmt: Format,
    name: str,
) -> list:
    from ome_zarr.writer import add_metadata, write_multiscale_labels

    pyramid = _pyramid(labels.data, spatial, n_levels, labels=True)
    classes = label_classes(labels)
    metadata = {
        "colors": [{"label-value": v, "rgba": list(_PALETTE[v % len(_PALETTE)])} for v in classes],
        "properties": [{"label-value": v, "class": c} for v, c in classes.items()],
        "source": {"image": "../../"},
    }
    writes = write_multiscale_labels(
        pyramid,
        root,
        name,
        fmt=fmt,
        axes=axes,
        storage_options=_storage(pyramid, spatial),
        label_metadata=metadata,
        compute=False,
    )
    _set_multiscales(root["labels"][name], labels, spatial, n_levels, fmt, axes, name=name, method="mode")
    if fmt.zarr_format == 3:
        # NGFF 0.5 wants the version in every group's "ome"; ome-zarr leaves it out of labels/.
        add_metadata(root["labels"], {"version": fmt.version}, fmt=fmt)
    return writes


def _set_multiscales(
    group: zarr.Group,
    image: xr.DataArray,
    spatial: tuple[int, ...],
    n_levels: int,
    fmt: Format,
    axes: list[dict[str, str]],
    *,
    name: str,
    method: str,
) -> None:
    """Replace ome-zarr's multiscales metadata with exact transforms and the downsampling method.

    ome-zarr derives scales from shape ratios (wrong once odd sides are trimmed) and
    leaves translations in voxels; the strict NGFF schema also asks for ``type`` and
    ``metadata``.
    """
    from ome_zarr.writer import add_metadata, get_metadata, write_multiscales_metadata

    transforms = _transforms(image, spatial, n_levels)
    datasets = [{"path": f"s{k}", "coordinateTransformations": t} for k, t in enumerate(transforms)]
    about = {
        "description": f"2x block {method} over {[axes[i]['name'] for i in spatial]}, odd remainders trimmed",
        "method": "dask.array.coarsen",
        "version": dask.__version__,
    }
    write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=axes, name=name, metadata=about)
    multiscales = get_metadata(group)["multiscales"]
    multiscales[0]["type"] = method
    add_metadata(group, {"multiscales": multiscales}, fmt=fmt)


def _provenance(image: xr.DataArray, dataset: str | Path, axes: list[dict[str, str]]) -> dict[str, Any]:
    coords = {ax["name"]: image[dim].values.tolist() for ax, dim in zip(axes, image.dims, strict=True)}
    return {
        "source": str(dataset),
        "variable": str(image.name),
        "modality": "ct" if image.dims == CT_DIMS else "xanes",
        "units": {str(d): image[d].attrs.get("units", "") for d in image.dims},
        "coordinates": {k: v for k, v in coords.items() if k in ("t", "scan", "energy")},
    }
