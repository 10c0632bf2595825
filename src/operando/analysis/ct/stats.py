"""Statistics of a segmented CT time series, as in the paper: volumes, thicknesses, maps.

One pass over the labels: one task per chunk column adds its chunks into
per-column counts of the split classes (:data:`~operando.analysis.ct.regions.SPLIT_CLASSES`,
background being the rest of the column) and the positions of the two electrode
faces. Everything else (volumes, thickness, area fractions, Pearson
colocalization, edge means) follows from those ``T × 7 × Y × X`` maps, in numpy
once they are reduced. The split plane comes from a sample of the chunk columns
(:func:`~operando.analysis.ct.regions.split_by_depth`) in the same graph: the
column tasks wait for it, and every chunk is read once.

The per-chunk kernel (:mod:`operando.analysis.ct._runs`, numba) relies on the
layers along the normal: it compares each slice with the one before, eight voxels
at a time, and works only where a column changes label, closing a run (its length
added to its class and side, the face moved). One memory pass per chunk.

Thickness of the sides follows the paper's Fig. 3c: the stripping side is the
stripping electrode plus redeposited Li, the plating side the plating electrode
plus deposited Li (dendrites excluded). An electrode's face is the outermost
voxel towards the gap of the electrode *or a pit* (pits are voids carved into the
stripping electrode from its face, so without them the face would drop to the
pit bottoms).
"""

from __future__ import annotations

import operator
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from operando.analysis.ct import regions
from operando.analysis.ct._planes import pearson, plane_totals
from operando.analysis.ct._runs import NOT_COUNTED, add_side_runs
from operando.analysis.ct.regions import SIDE_CLASSES, SIDES, SPLIT_CLASSES
from operando.engine.cluster import compute_on
from operando.errors import ClassNameError, ConfigError, UnsupportedDtypeError, VoxelSizeError
from operando.io.layout import label_classes
from operando.io.store import mark_complete

__all__ = ["cell_statistics", "column_chunks", "roi_area_um2", "write_stats"]

_PACKED = ("electrode", "deposited", "dendrite", "pit")  # counted roles; background is the rest
#: Output planes of the pass: counts by side of the plane (named stripping/plating after it), then faces.
_COUNTED = ("electrode_low", "electrode_high", "deposited_low", "deposited_high", "dendrite", "pit")
_SIDE_PLANES = {"low": np.array([0, 2, 4, 5]), "high": np.array([1, 3, 4, 5])}  # per packed role
#: ``SPLIT_CLASSES[1:]`` from the counted planes, by plating side.
_CLASS_PLANES = {"high": [0, 1, 3, 2, 4, 5], "low": [1, 0, 2, 3, 4, 5]}
_N_OUT = len(_COUNTED) + 2
_COLUMN_TASK_BYTES = 512 * 2**20  # labels one task holds at once: a chunk column, or part of a tall one
_LOW_HIGH = ("low", "high")
_FLOAT_MAPS = np.empty((0,) * 4, np.float32)  # meta of the lazy map views: dask need not call their functions


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
        time in min; dask-backed arrays are read chunk by chunk. Read fastest
        in whole columns along the normal (:func:`column_chunks`).
    normal_axis : str, optional, keyword-only
        Electrode normal (default: attribute ``normal_axis``, else ``"z"``).
    crop : str, optional, keyword-only
        ``"y=12:-12,x=12:-12"`` in voxels (:func:`~operando.analysis.ct.regions.parse_crop`).
    plating_side : {"auto", "high", "low"}, keyword-only
        Side of the plating electrode along the normal; ``auto``: the side where
        deposited Li grows during charge (first half of the timesteps), from the
        exact per-side totals of the pass (so not with ``compute=False``).
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
    if labels.dtype != np.uint8:  # the chunk kernel looks class values up in 256-entry tables
        raise UnsupportedDtypeError(
            labels.name or "labels",
            f"data type {labels.dtype}: the statistics count uint8 class values (0-255)",
            remedy="Cast with labels.astype('uint8') once every value is known to be below 256; "
            "`operando ct segment` writes uint8.",
        )
    _check_pairs(colocalize)
    voxel = _voxel_size(labels, normal, voxel_size_um)
    labels = labels.isel(regions.parse_crop(crop, labels.sizes))
    plane_dims = tuple(d for d in labels.dims if d not in ("time", normal))
    labels = labels.transpose("time", normal, *plane_dims)
    arr = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.data)
    if plating_side not in ("auto", "high", "low"):
        raise ConfigError("plating_side", f"{plating_side!r} is not 'auto', 'high' or 'low'")
    if plating_side == "auto" and not compute:
        raise ConfigError(
            "plating_side",
            "'auto' is known only after the pass over every chunk, so it cannot name lazy statistics",
            remedy="Pass plating_side='high' or 'low' with compute=False.",
        )
    planes = regions.split_by_depth(arr, roles)
    if not compute:  # the plane is an attribute: known before the lazy pass
        (planes,) = compute_on(client, planes)
    columns = _column_partials(arr, planes, roles)
    if compute:
        # One graph: the sampled chunks are read once, for the planes and their columns. Reduce once,
        # then finish on the small maps in numpy (no per-variable dask overhead).
        columns, planes = compute_on(client, columns, planes)
    side = _plating_side(columns) if plating_side == "auto" else plating_side
    counts, faces = _split_columns(columns, labels.sizes[normal], side)
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


def column_chunks(labels: xr.DataArray, *, normal_axis: str | None = None) -> dict[str, int]:
    """Chunks for reading ``labels`` in whole columns along the normal: ``{normal: size}``.

    For :func:`~operando.io.store.open_dataset`'s ``chunks``: one task then reads a
    chunk column with one zarr call, which decodes its chunks concurrently, instead
    of one task per chunk (``benchmarks/results/stats.md``: about 20 % less read
    time). The size is a multiple of the current chunks, at most
    :data:`_COLUMN_TASK_BYTES` of labels per column.

    Parameters
    ----------
    labels : xarray.DataArray of shape (T, Z, Y, X)
        Opened with the on-disk chunks.
    normal_axis : str, optional, keyword-only
        As in :func:`cell_statistics`.
    """
    normal = regions.resolve_normal(labels.dims, normal_axis, labels.attrs)
    if labels.chunks is None:
        return {normal: labels.sizes[normal]}
    sizes = {d: max(c) for d, c in zip(labels.dims, labels.chunks, strict=True)}
    slice_bytes = labels.dtype.itemsize * int(np.prod([n for d, n in sizes.items() if d != normal]))
    per_task = max(1, _COLUMN_TASK_BYTES // (slice_bytes * sizes[normal])) * sizes[normal]
    return {normal: min(labels.sizes[normal], per_task)}


def roi_area_um2(stats: xr.Dataset) -> float:
    """In-plane area of the ROI (µm²) of :func:`cell_statistics`'s result: what its thicknesses divide by."""
    plane = [d for d in stats.thickness_map_um.dims if d not in ("time", "class")]
    return float(stats.attrs["voxel_size_um"]) ** 2 * stats.sizes[plane[0]] * stats.sizes[plane[1]]


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


def _column_partials(arr: da.Array, planes: np.ndarray | da.Array, roles: Mapping[str, int]) -> da.Array:
    """Per-column counts and faces (T, 8, A, B): :data:`_COUNTED` counts, the low and the high face.

    One task per chunk column gets the column's chunks as a list (``concatenate=False``:
    no copy) and adds each into one output: no per-chunk partial maps (fresh memory,
    page faults) and no reduction tree. A task holds its chunks at once, so a tall
    column is cut into groups of at most :data:`_COLUMN_TASK_BYTES`, merged after.
    """
    dtype = _partial_dtype(arr.shape[1])
    edges = np.cumsum((0, *arr.chunks[1]))
    parts = [
        da.blockwise(
            _columns_kernel,
            "tcab",
            arr[:, edges[a] : edges[b]],
            "tzab",
            # Indexed, not passed whole (None), which would embed a copy of its graph, sample reads included.
            da.asarray(planes).rechunk((arr.chunks[0],)),
            "t",
            new_axes={"c": _N_OUT},
            concatenate=False,
            dtype=dtype,
            meta=np.empty((0,) * 4, dtype),
            roles=dict(roles),
            starts=tuple(int(z) for z in edges[a:b]),
            n_total=arr.shape[1],
        )
        for a, b in _z_groups(arr)
    ]
    return parts[0] if len(parts) == 1 else da.map_blocks(_merge_groups, *parts, dtype=dtype)


def _z_groups(arr: da.Array) -> list[tuple[int, int]]:
    """Runs of chunk rows along the normal whose chunk column stays within :data:`_COLUMN_TASK_BYTES`."""
    row_bytes = max(arr.chunks[0]) * max(arr.chunks[2]) * max(arr.chunks[3]) * arr.dtype.itemsize
    groups, start, height = [], 0, 0
    for i, n in enumerate(arr.chunks[1]):
        if height and (height + n) * row_bytes > _COLUMN_TASK_BYTES:
            groups.append((start, i))
            start, height = i, 0
        height += n
    return [*groups, (start, len(arr.chunks[1]))]


def _merge_groups(*parts: np.ndarray) -> np.ndarray:
    """Partials (t, 8, a, b) of groups of one column: counts add up, each face is the maximum."""
    out = parts[0].copy()
    for part in parts[1:]:
        out[:, :-2] += part[:, :-2]
        np.maximum(out[:, -2:], part[:, -2:], out=out[:, -2:])
    return out


def _partial_dtype(n_total: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """uint16 where no column count or face (≤ ``n_total``) can overflow it: half the bytes of int32."""
    return np.uint16 if n_total <= np.iinfo(np.uint16).max else np.int32


def _plating_side(columns: np.ndarray) -> str:
    """The side (``"high"``/``"low"``) where deposited Li grows during charge, from the reduced partials."""
    low, high = (
        columns[:, _COUNTED.index(f"deposited_{s}")].sum(axis=(1, 2), dtype=np.int64) for s in _LOW_HIGH
    )
    return regions.choose_plating_side(low, high)


def _split_columns(columns, n_total: int, side: str):
    """Reduced partials (T, 8, A, B) → class counts (T, 7, A, B) and faces (T, 2, A, B).

    The counted planes are named by ``side``, the plating electrode's side of the plane.
    """
    n = _N_OUT - 2
    order = _CLASS_PLANES[side]
    if isinstance(columns, da.Array):
        counts = columns[:, order].astype(np.int32)
        background = n_total - counts.sum(axis=1, keepdims=True, dtype=np.int32)
        return da.concatenate([background, counts], axis=1), columns[:, n:]
    # In the partials' dtype: each count, and so the background, is at most n_total.
    counts = np.empty((columns.shape[0], n + 1, *columns.shape[2:]), columns.dtype)
    for c, plane in enumerate(order, start=1):
        counts[:, c] = columns[:, plane]
    # Background is the rest of the column (one plane less per chunk), subtracted plane by plane:
    # a reduction over the class axis would stride through the whole array.
    background = counts[:, 0]
    background[...] = n_total
    for c in range(1, n + 1):
        background -= counts[:, c]
    return counts, columns[:, n:]


def _columns_kernel(
    blocks: list[np.ndarray],
    planes: np.ndarray,
    *,
    roles: Mapping[str, int],
    starts: tuple[int, ...],
    n_total: int,
) -> np.ndarray:
    """The chunks (t, n_i, a, b) of one chunk column, starting at ``starts`` → (t, 8, a, b).

    ``planes`` (t,) is the block of :func:`~operando.analysis.ct.regions.split_by_depth` of these times.

    Per column: the :data:`_COUNTED` counts, low face + 1 and n_total − high face
    (0: none), so that each face is the maximum over the chunks.
    """
    tables = _side_tables(roles)
    out = np.zeros((blocks[0].shape[0], _N_OUT, *blocks[0].shape[2:]), _partial_dtype(n_total))
    for i in range(out.shape[0]):
        cuts = [
            int(np.clip(planes[i] - z0, 0, block.shape[1])) for block, z0 in zip(blocks, starts, strict=True)
        ]
        low = [block[i, :cut] for block, cut in zip(blocks, cuts, strict=True)]
        high = [block[i, cut:] for block, cut in zip(blocks, cuts, strict=True)]
        for side, slabs, first in (("low", low, starts[0]), ("high", high, max(starts[0], int(planes[i])))):
            add_side_runs(
                slabs, tables[side], tables["faces"], out[i], first=first, n_total=n_total, low=side == "low"
            )
    return out


def _side_tables(roles: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Label value → count plane of each side (``low``/``high``), and the face values, as 256-entry tables."""
    tables = {}
    for side, planes in _SIDE_PLANES.items():
        table = np.full(256, NOT_COUNTED, np.int64)
        table[[roles[r] for r in _PACKED]] = planes
        tables[side] = table
    faces = np.zeros(256, bool)
    faces[[roles["electrode"], roles["pit"]]] = True
    return {**tables, "faces": faces}


def _assemble(
    labels: xr.DataArray,
    counts: np.ndarray | da.Array,
    faces: np.ndarray | da.Array,
    normal: str,
    voxel: float,
    side: str,
    pairs: Sequence[tuple[str, str]],
) -> xr.Dataset:
    """The statistics Dataset from the column counts (T, 7, A, B) and faces (T, 2, A, B).

    Plain array maths (numpy, or dask when lazy) and one Dataset at the end: xarray
    arithmetic on the small maps would cost more than the whole chunk pass.
    """
    plane_dims = labels.dims[2:]
    coords = {
        "time": labels["time"].variable,
        "class": ("class", np.array(SPLIT_CLASSES)),
        "side": ("side", np.array(SIDES)),
        **{d: labels[d].variable for d in plane_dims},
        "pair": ("pair", np.array([f"{a}~{b}" for a, b in pairs], dtype=str)),
    }
    um = {"units": "µm"}
    maps = _class_maps(counts, voxel, labels.sizes[normal], pairs)
    axis = (float(labels[normal].values[0]), labels.sizes[normal], voxel)  # first slice (µm), slices, step
    edges = _edges_um(faces, axis, side)
    edge_mean = _edge_means_um(faces, axis, side)
    ts, tsc, tsy = ("time", "side"), ("time", "class"), ("time", "side", *plane_dims)
    tcy = ("time", "class", *plane_dims)
    stripping, plating = SIDES.index("stripping"), SIDES.index("plating")
    data = {
        "voxels": (tsc, maps["voxels"], {"long_name": "voxels per class"}),
        "volume_um3": (tsc, maps["volume"], {"units": "µm³", "long_name": "volume per class"}),
        "thickness_um": (tsc, maps["thickness"], {**um, "long_name": "volume / ROI in-plane area"}),
        "side_thickness_um": (
            ts,
            maps["sides"],
            {**um, "long_name": "electrode + its Li layer (dendrites excluded)"},
        ),
        "thickness_map_um": (
            tcy,
            maps["tmap"],
            {**um, "long_name": "class thickness along the normal (sum projection)"},
        ),
        "density_map": (tcy, maps["density"], {"long_name": "fraction of the column (mean projection)"}),
        "area_fraction": (tsc, maps["area"], {"long_name": "fraction of in-plane pixels occupied"}),
        "colocalization": (("time", "pair"), maps["coloc"], {"long_name": "Pearson r of thickness maps"}),
        "edge_um": (tsy, edges, {**um, "long_name": "electrode face towards the gap, along the normal"}),
        "edge_mean_um": (ts, edge_mean, um),
        "edge_displacement_um": (ts, edge_mean - edge_mean[:1], um),
        "gap_um": (
            ("time",),
            (1.0 if side == "high" else -1.0) * (edge_mean[:, plating] - edge_mean[:, stripping]),
            {**um, "long_name": "distance between the electrode faces"},
        ),
        "void_map_um": (
            plane_dims,
            maps["tmap"][-1, SPLIT_CLASSES.index("pit")],
            {**um, "long_name": "pits at the last time"},
        ),
    }
    return xr.Dataset(data, coords=coords)


def _class_maps(counts, voxel: float, n_total: int, pairs: Sequence[tuple[str, str]]) -> dict:
    """Per-class totals (T, 7), side thicknesses (T, 2), maps (T, 7, A, B) and Pearson r (T, P).

    The thickness and density maps are lazy views, one (A, B) plane per chunk, of the
    counts: float32 copies of all of them would be 4× the counts' memory, made
    whenever statistics are computed. Writing or plotting computes them plane by plane.
    """
    voxels, occupied = _plane_totals(counts)
    volume = voxels * voxel**3
    thickness = volume / (float(np.prod(counts.shape[2:])) * voxel**2)
    index = SPLIT_CLASSES.index
    sides = [
        thickness[:, index(a)] + thickness[:, index(b)] for a, b in (SIDE_CLASSES[side] for side in SIDES)
    ]
    planes = _plane_views(counts)
    xp = da if isinstance(counts, da.Array) else np
    # Pearson r is scale-free: the counts give the thickness maps' r without the µm copies.
    coloc = _pearson_pairs(counts, [(index(a), index(b)) for a, b in pairs])
    return {
        "voxels": voxels,
        "volume": volume,
        "thickness": thickness,
        "sides": xp.stack(sides, axis=1),
        "tmap": planes.map_blocks(_scaled, voxel, meta=_FLOAT_MAPS),
        "density": planes.map_blocks(_scaled, 1.0 / n_total, meta=_FLOAT_MAPS),
        "area": occupied / float(np.prod(counts.shape[2:])),
        "coloc": coloc,
    }


def _plane_views(array: np.ndarray | da.Array) -> da.Array:
    """``array`` (T, C, A, B) as a dask array of one chunk per (t, c); a numpy array's are views.

    ``da.from_array`` copies its input first: a second copy of every map, and 8 of the
    18 ms of assembly after the pass over 4 × 512² columns. Here the array is one key
    of the graph, shipped once to a cluster, and not tokenized (that would hash every value).
    """
    if isinstance(array, da.Array):  # lazy statistics
        return array.rechunk({0: 1, 1: 1})
    name = f"stats-planes-{uuid.uuid4().hex}"
    source = f"{name}-source"
    graph: dict[Any, Any] = {source: array}
    for t, c in np.ndindex(*array.shape[:2]):
        graph[(name, t, c, 0, 0)] = (operator.getitem, source, (slice(t, t + 1), slice(c, c + 1)))
    chunks = tuple((1,) * n for n in array.shape[:2]) + tuple((n,) for n in array.shape[2:])
    return da.Array(graph, name, chunks, meta=np.empty((0,) * 4, array.dtype))


def _plane_totals(maps):
    """Sum and non-zero pixels of each plane of maps (T, C, A, B) → two (T, C) arrays of int64."""
    if isinstance(maps, da.Array):
        return maps.sum(axis=(2, 3), dtype=np.int64), da.count_nonzero(maps, axis=(2, 3))
    return plane_totals(maps)


def _scaled(counts: np.ndarray, factor: float) -> np.ndarray:
    return np.multiply(counts, np.float32(factor), dtype=np.float32)


def _pearson_pairs(counts, pairs: Sequence[tuple[int, int]]):
    """Pearson r over the plane of class maps ``pairs`` of counts (T, C, A, B) → (T, P), as ``xarray.corr``.

    NaN for a constant map. From exact integer moments (:func:`~operando.analysis.ct._planes.pearson`):
    no float copies of the maps, and no BLAS, whose threads spin on after a call, on
    the cores the next pass decodes on (7 % of a 4 × 512³ pass's CPU; ``stats.md``).
    """
    if isinstance(counts, da.Array):
        planes = counts.rechunk((1, -1, -1, -1))
        return planes.map_blocks(_pearson_pairs, pairs, drop_axis=(2, 3), chunks=(1, len(pairs)), dtype=float)
    out = np.empty((counts.shape[0], len(pairs)))
    for t, maps in enumerate(counts):
        for k, (a, b) in enumerate(pairs):
            out[t, k] = pearson(maps[a], maps[b])
    return out


def _edges_um(faces, axis: tuple[float, int, float], side: str):
    """Face positions (T, side, A, B) in µm along the normal, NaN where a column has none.

    ``axis`` is (first slice position in µm, slices along the normal, voxel size in µm).
    Lazy plane views of the faces, as the thickness maps: float32 copies of them would
    be made on every call, 8× the uint16 faces' memory.
    """
    planes = _plane_views(faces)
    um = planes.map_blocks(_face_um, *axis, meta=_FLOAT_MAPS)
    return um if side == "high" else um[:, ::-1]  # (stripping, plating): the plating side is the high one


def _face_um(faces: np.ndarray, n0: float, n_total: int, voxel: float, block_id=None) -> np.ndarray:
    """Face codes of one side (t, 1, A, B) → µm; the side (low 0, high 1) is the block's index on axis 1."""
    f = faces.astype(np.float64)
    # low face: slice f - 1; high face: slice n_total - f; 0 marks none (f - 1 wraps there, masked)
    position = n_total - f if block_id[1] == 1 else f - 1
    return np.where(faces > 0, n0 + position * voxel, np.nan).astype(np.float32)


def _edge_means_um(faces, axis: tuple[float, int, float], side: str):
    """Mean face position (T, side) over the columns that have one (NaN if none), exact from the codes."""
    n0, n_total, voxel = axis
    xp = da if isinstance(faces, da.Array) else np
    total, count = _plane_totals(faces)
    # sum of (f - 1) over the low faces, of (n_total - f) over the high ones; codes of 0 add nothing
    slices = xp.stack([total[:, 0] - count[:, 0], n_total * count[:, 1] - total[:, 1]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = n0 + voxel * slices / count
    return mean if side == "high" else mean[:, ::-1]


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
    if isinstance(ds["voxels"].data, da.Array):  # lazy statistics: one pass for everything
        ds = ds.compute()
    # else only the map views are lazy: to_zarr computes them one plane at a time
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
