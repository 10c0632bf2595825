"""Statistics of a segmented CT time series, as in the paper: volumes, thicknesses, maps.

One pass over the labels: every chunk is reduced to per-column counts of the
split classes (:data:`~operando.analysis.ct.regions.SPLIT_CLASSES`) and the
positions of the two electrode faces, then dask combines the partials along the
normal in a tree. Everything else (volumes, thickness, area fractions, Pearson
colocalization, edge means) follows from those ``T × 7 × Y × X`` maps. The split
plane is found first by a cheap pass (:mod:`~operando.analysis.ct.regions`).

Thickness of the sides follows the paper's Fig. 3c: the stripping side is the
stripping electrode plus redeposited Li, the plating side the plating electrode
plus deposited Li (dendrites excluded). An electrode's face is the outermost
voxel towards the gap of the electrode *or a pit* (pits are voids carved into the
stripping electrode from its face, so without them the face would drop to the
pit bottoms).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from operando.analysis.ct import regions
from operando.analysis.ct.regions import SIDES, SPLIT_CLASSES
from operando.errors import ClassNameError, ConfigError, VoxelSizeError
from operando.io.layout import label_classes
from operando.io.store import mark_complete

__all__ = ["cell_statistics", "write_stats"]

_PACKED = ("electrode", "deposited", "dendrite", "pit")  # counted roles; background is the rest
_N_OUT = len(SPLIT_CLASSES) + 2  # counts, then the low and the high face


def cell_statistics(
    labels: xr.DataArray,
    *,
    normal_axis: str | None = None,
    crop: str | None = None,
    plating_side: str = "auto",
    class_names: Mapping[str, str] | None = None,
    colocalize: Sequence[tuple[str, str]] = (("pit", "dendrite"), ("pit", "deposited_li")),
    voxel_size_um: float | None = None,
    client: Any | None = None,
    compute: bool = True,
) -> xr.Dataset:
    """Per-class volumes, thicknesses, flattened maps and electrode edges of a cell.

    Parameters
    ----------
    labels : xarray.DataArray of shape (T, Z, Y, X), uint8
        Segmentation with CF ``flag_values``/``flag_meanings``, coords in µm,
        time in min; dask-backed arrays are read chunk by chunk.
    normal_axis : str, optional, keyword-only
        Electrode normal (default: attribute ``normal_axis``, else ``"z"``).
    crop : str, optional, keyword-only
        ``"y=12:-12,x=12:-12"`` in voxels (:func:`~operando.analysis.ct.regions.parse_crop`).
    plating_side : {"auto", "high", "low"}, keyword-only
        Side of the plating electrode along the normal; ``auto``: the side where
        deposited Li grows during charge (first half of the timesteps).
    class_names : mapping of str to str, optional, keyword-only
        ``{role: class name}`` for labels not named ``background electrode
        deposited dendrite pit``.
    colocalize : sequence of (str, str), keyword-only
        Pairs of split classes whose thickness maps are correlated.
    voxel_size_um : float, optional, keyword-only
        Default: the ``voxel_size_um`` attribute, else the normal coord spacing.
    client : distributed.Client, optional, keyword-only
        Compute on its cluster.
    compute : bool, keyword-only
        Return computed values; False returns a lazy Dataset whose compute reads
        every chunk once.

    Returns
    -------
    xarray.Dataset
        See the module docstring of :mod:`operando.analysis.ct` / the report for
        the schema: ``voxels``, ``volume_um3``, ``thickness_um`` (time, class);
        ``side_thickness_um``, ``edge_mean_um``, ``edge_displacement_um`` (time,
        side); ``gap_um`` (time); ``thickness_map_um``, ``density_map`` (time,
        class, y, x); ``area_fraction`` (time, class); ``colocalization``
        (time, pair); ``edge_um`` (time, side, y, x); ``void_map_um`` (y, x).
    """
    normal = regions.resolve_normal(labels.dims, normal_axis, labels.attrs)
    roles = regions.resolve_roles(label_classes(labels), class_names)
    _check_pairs(colocalize)
    voxel = _voxel_size(labels, normal, voxel_size_um)
    labels = labels.isel(regions.parse_crop(crop, labels.sizes))
    plane_dims = tuple(d for d in labels.dims if d not in ("time", normal))
    labels = labels.transpose("time", normal, *plane_dims)
    arr = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.data)
    fraction, deposited = regions.depth_profiles(arr, roles, client=client)
    planes = regions.split_planes(fraction)
    side = regions.choose_plating_side(deposited, planes) if plating_side == "auto" else plating_side
    if side not in ("high", "low"):
        raise ConfigError("plating_side", f"{plating_side!r} is not 'auto', 'high' or 'low'")
    counts, faces = _column_partials(arr, planes, roles, stripping_low=side == "high")
    if compute:
        # Reduce once, then finish on the small maps in numpy (no per-variable dask overhead).
        lazy = (counts, faces)
        counts, faces = client.compute(lazy, sync=True) if client is not None else dask.compute(*lazy)
    ds = _assemble(labels, counts, faces, normal, voxel, side, colocalize)
    n = labels[normal].values
    ds.attrs.update(
        voxel_size_um=voxel,
        normal_axis=normal,
        crop=crop or "",
        split_plane_um=[float((n[p - 1] + n[p]) / 2) for p in planes],
        plating_side=side,
        source=" ".join(label_classes(labels).values()),
    )
    return ds


def _voxel_size(labels: xr.DataArray, normal: str, given: float | None) -> float:
    if given is not None:
        return float(given)
    if "voxel_size_um" in labels.attrs:
        return float(labels.attrs["voxel_size_um"])
    step = np.diff(labels[normal].values)
    if step.size == 0 or not np.allclose(step, step[0]) or step[0] <= 0:
        raise VoxelSizeError(normal, "no voxel_size_um attribute and no regular coordinate to infer it")
    return float(step[0])


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    bad = sorted({c for pair in pairs for c in pair} - set(SPLIT_CLASSES))
    if bad:
        raise ClassNameError("colocalize", f"unknown classes {bad}; available: {list(SPLIT_CLASSES)}")


def _column_partials(
    arr: da.Array, planes: np.ndarray, roles: Mapping[str, int], *, stripping_low: bool
) -> tuple[da.Array, da.Array]:
    """Per-column counts (T, 7, A, B) int32 and face indices (T, 2, A, B) of low/high side."""
    nz_blocks = arr.numblocks[1]
    parts = arr.map_blocks(
        _chunk_columns,
        planes,
        _side_tables(roles, stripping_low),
        arr.shape[1],
        new_axis=2,
        chunks=(arr.chunks[0], (1,) * nz_blocks, (_N_OUT,), *arr.chunks[2:]),
        dtype=np.int32,
        meta=np.empty((0,) * 5, np.int32),
    )
    counts = parts[:, :, : len(SPLIT_CLASSES)].sum(axis=1, dtype=np.int32)
    faces = parts[:, :, len(SPLIT_CLASSES) :].max(axis=1)
    return counts, faces


def _side_tables(roles: Mapping[str, int], stripping_low: bool) -> dict[str, np.ndarray]:
    """Look-up tables: packed counter increments, face classes, output class per packed role."""
    pack = np.array([roles[r] for r in _PACKED], np.uint8)
    face = np.zeros(256, bool)
    face[[roles["electrode"], roles["pit"]]] = True
    strip_out = [SPLIT_CLASSES.index(c) for c in ("stripping_electrode", "redeposited_li", "dendrite", "pit")]
    plate_out = [SPLIT_CLASSES.index(c) for c in ("plating_electrode", "deposited_li", "dendrite", "pit")]
    low, high = (strip_out, plate_out) if stripping_low else (plate_out, strip_out)
    return {"pack": pack, "face": face, "low": np.array(low), "high": np.array(high)}


def _chunk_columns(
    block: np.ndarray, planes: np.ndarray, tables: dict, n_total: int, block_info: dict | None = None
) -> np.ndarray:
    """One chunk (t, n, a, b) → (t, 1, 9, a, b) int32: 7 column counts, low face + 1, n_total − high face."""
    (t0, _), (z0, _), *_ = block_info[0]["array-location"]
    out = np.zeros((block.shape[0], 1, _N_OUT, *block.shape[2:]), np.int32)
    for i, volume in enumerate(block):
        cut = int(np.clip(planes[t0 + i] - z0, 0, volume.shape[0]))
        for slab, side, first in ((volume[:cut], "low", z0), (volume[cut:], "high", z0 + cut)):
            if slab.shape[0] == 0:
                continue
            packed = _packed_counts(slab, tables["pack"])
            out[i, 0, tables[side]] += packed
            out[i, 0, 0] += slab.shape[0] - packed.sum(axis=0, dtype=np.int32)
            has_face = (packed[0] + packed[3]) > 0
            if side == "low":
                top = _face(slab, tables["face"], has_face, top=True)
                out[i, 0, -2] = np.where(has_face, top + first + 1, 0)
            else:
                out[i, 0, -1] = np.where(
                    has_face, n_total - (_face(slab, tables["face"], has_face, top=False) + first), 0
                )
    return out


def _packed_counts(slab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts (4, a, b) of the label ``values`` of the counted roles along axis 0."""
    dtype = np.uint16 if slab.shape[0] < 2**16 else np.int32
    # One compare and one contiguous row-sum per role beat a gather into packed counters.
    return np.stack([(slab == v).sum(axis=0, dtype=dtype) for v in values]).astype(np.int32)


def _face(slab: np.ndarray, face: np.ndarray, wanted: np.ndarray, *, top: bool) -> np.ndarray:
    """Index along axis 0 of the outermost face-class voxel per column (top: highest), −1 if none."""
    where = np.full(slab.shape[1:], -1, np.int32)
    todo = wanted.copy()
    order = range(slab.shape[0] - 1, -1, -1) if top else range(slab.shape[0])
    # Scan inwards from the gap side; most columns stop at the first slice.
    for z in order:
        if not todo.any():
            break
        hit = todo & face[slab[z]]
        where[hit] = z
        todo &= ~hit
    return where


def _assemble(
    labels: xr.DataArray,
    counts: da.Array,
    faces: da.Array,
    normal: str,
    voxel: float,
    side: str,
    pairs: Sequence[tuple[str, str]],
) -> xr.Dataset:
    """The statistics Dataset from the reduced column counts and faces (lazy)."""
    plane_dims = labels.dims[2:]
    coords = {
        "time": labels["time"].variable,
        "class": ("class", np.array(SPLIT_CLASSES)),
        "side": ("side", np.array(SIDES)),
        **{d: labels[d].variable for d in plane_dims},
        "pair": ("pair", np.array([f"{a}~{b}" for a, b in pairs], dtype=str)),
    }
    dims4 = ("time", "class", *plane_dims)
    um = {"units": "µm"}
    column = xr.DataArray(counts, dims=dims4, coords={k: coords[k] for k in dims4})
    tmap = (column * voxel).astype(np.float32)
    voxels = column.sum(plane_dims, dtype=np.int64)
    area = float(np.prod([labels.sizes[d] for d in plane_dims])) * voxel**2
    volume = voxels * voxel**3
    thickness = volume / area
    edges = _edges_um(labels, faces, normal, voxel, side, plane_dims, coords)
    edge_mean = edges.mean(plane_dims)
    sides = xr.concat(
        [
            thickness.sel({"class": ["stripping_electrode", "redeposited_li"]}).sum("class"),
            thickness.sel({"class": ["plating_electrode", "deposited_li"]}).sum("class"),
        ],
        dim=xr.Variable("side", np.array(SIDES)),
    ).transpose("time", "side")
    coloc = [xr.corr(tmap.sel({"class": a}), tmap.sel({"class": b}), dim=plane_dims) for a, b in pairs]
    high_minus_low = 1.0 if side == "high" else -1.0
    data = {
        "voxels": (voxels, {"long_name": "voxels per class"}),
        "volume_um3": (volume, {"units": "µm³", "long_name": "volume per class"}),
        "thickness_um": (thickness, {**um, "long_name": "volume / ROI in-plane area"}),
        "side_thickness_um": (sides, {**um, "long_name": "electrode + its Li layer (dendrites excluded)"}),
        "thickness_map_um": (tmap, {**um, "long_name": "class thickness along the normal (sum projection)"}),
        "density_map": (
            (column / labels.sizes[normal]).astype(np.float32),
            {"long_name": "fraction of the column (mean projection)"},
        ),
        "area_fraction": (
            (column > 0).mean(plane_dims),
            {"long_name": "fraction of in-plane pixels occupied"},
        ),
        "colocalization": (
            xr.concat(coloc, dim="pair").transpose("time", "pair")
            if coloc
            else xr.DataArray(np.zeros((labels.sizes["time"], 0)), dims=("time", "pair")),
            {"long_name": "Pearson r of thickness maps"},
        ),
        "edge_um": (edges, {**um, "long_name": "electrode face towards the gap, along the normal"}),
        "edge_mean_um": (edge_mean, um),
        "edge_displacement_um": (edge_mean - edge_mean.isel(time=0), um),
        "gap_um": (
            high_minus_low * (edge_mean.sel(side="plating") - edge_mean.sel(side="stripping")),
            {**um, "long_name": "distance between the electrode faces"},
        ),
        "void_map_um": (
            tmap.sel({"class": "pit"}).isel(time=-1),
            {**um, "long_name": "pits at the last time"},
        ),
    }
    ds = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in coords]) for k, (v, _) in data.items()})
    ds = ds.assign_coords({k: v for k, v in coords.items() if k not in ds.coords})
    for name, (_, attrs) in data.items():
        ds[name].attrs.update(attrs)
    return ds


def _edges_um(labels, faces, normal, voxel, side, plane_dims, coords) -> xr.DataArray:
    """Face positions (T, side, A, B) in µm along the normal, NaN where a column has none."""
    n0 = float(labels[normal].values[0])
    n_total = labels.sizes[normal]
    xp = da if isinstance(faces, da.Array) else np
    low = xp.where(faces[:, 0] > 0, n0 + (faces[:, 0] - 1) * voxel, np.nan)
    high = xp.where(faces[:, 1] > 0, n0 + (n_total - faces[:, 1]) * voxel, np.nan)
    stacked = xp.stack([low, high] if side == "high" else [high, low], axis=1).astype(np.float32)
    dims = ("time", "side", *plane_dims)
    return xr.DataArray(stacked, dims=dims, coords={k: coords[k] for k in dims})


def write_stats(ds: xr.Dataset, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``stats.csv``, ``sides.csv``, ``colocalization.csv`` and ``maps.zarr`` to ``out_dir``.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`cell_statistics` (computed or lazy).
    out_dir : str or Path
        Created if missing; existing files are refused unless ``overwrite``.
    """
    from operando.errors import OutputExistsError

    out = Path(out_dir)
    names = ("stats.csv", "sides.csv", "colocalization.csv", "maps.zarr")
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(out, f"holds {existing} already")
    out.mkdir(parents=True, exist_ok=True)
    ds = ds.compute()
    table = ds[["voxels", "volume_um3", "thickness_um"]].to_dataframe().reset_index()
    table[["time", "class", "voxels", "volume_um3", "thickness_um"]].to_csv(out / "stats.csv", index=False)
    side_vars = ["side_thickness_um", "edge_mean_um", "edge_displacement_um", "gap_um"]
    sides = ds[side_vars].to_dataframe().reset_index().rename(columns={"side_thickness_um": "thickness_um"})
    sides[["time", "side", "thickness_um", *side_vars[1:]]].to_csv(out / "sides.csv", index=False)
    ds["colocalization"].to_dataframe().reset_index()[["time", "pair", "colocalization"]].to_csv(
        out / "colocalization.csv", index=False
    )
    with warnings.catch_warnings():
        # Fixed-width str coords (class, side, pair) have no frozen zarr v3 spec yet; xarray reads them back.
        warnings.filterwarnings("ignore", message="The data type .* does not have a Zarr V3 specification")
        # every chunk stored, even all-NaN ones (no colocalization yet), so the store can be verified whole
        ds.to_zarr(out / "maps.zarr", mode="w", zarr_format=3, consolidated=False, write_empty_chunks=True)
    mark_complete(out / "maps.zarr")
    return out
