"""Statistics of a segmented CT time series, as in the paper: volumes, thicknesses, maps.

One pass over the labels: one task per chunk column adds its chunks into
per-column counts of the split classes (:data:`~operando.analysis.ct.regions.SPLIT_CLASSES`,
background being the rest of the column) and the positions of the two electrode
faces. Everything else (volumes, thickness, area fractions, Pearson
colocalization, edge means) follows from those ``T × 7 × Y × X`` maps, in numpy
once they are reduced. The split plane comes from a sample of the chunk columns
(:func:`~operando.analysis.ct.regions.split_by_depth`) in the same graph: the
column tasks wait for it, and every chunk is read once.

The per-chunk kernel (``benchmarks/results/stats.md``) relies on the layers along
the normal: one word-wise comparison of each slice with the next finds the runs
of identical slices, and only the first slice of each run is masked and counted,
weighted by the run's length. It skips the label values outside the runs'
[min, max], sums bool masks as uint8 in sub-slabs of ~1 MiB, and finds both faces
from the same masks with one weighted max instead of a slice-by-slice scan.

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
#: Output planes of the pass: counts by side of the plane (named stripping/plating after it), then faces.
_COUNTED = ("electrode_low", "electrode_high", "deposited_low", "deposited_high", "dendrite", "pit")
_SIDE_PLANES = {"low": np.array([0, 2, 4, 5]), "high": np.array([1, 3, 4, 5])}  # per packed role
#: ``SPLIT_CLASSES[1:]`` from the counted planes, by plating side.
_CLASS_PLANES = {"high": [0, 1, 3, 2, 4, 5], "low": [1, 0, 2, 3, 4, 5]}
_N_OUT = len(_COUNTED) + 2
_U8_SLICES = 255  # slices per uint8 partial count
_SUB_SLAB_BYTES = 2**20  # sub-slab masks stay cache-sized
_COLUMN_TASK_BYTES = 512 * 2**20  # labels one task holds at once: a chunk column, or part of a tall one
_LOW_HIGH = ("low", "high")
_SIDE_CLASSES = (("stripping_electrode", "redeposited_li"), ("plating_electrode", "deposited_li"))


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
        (planes,) = _compute(client, planes)
    columns = _column_partials(arr, planes, roles)
    if compute:
        # One graph: the sampled chunks are read once, for the planes and their columns. Reduce once,
        # then finish on the small maps in numpy (no per-variable dask overhead).
        columns, planes = _compute(client, columns, planes)
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


def _compute(client: Any | None, *collections: Any) -> tuple:
    """``dask.compute``, on ``client``'s cluster when given."""
    return (
        tuple(client.compute(list(collections), sync=True))
        if client is not None
        else dask.compute(*collections)
    )


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
    tables = {"pack": np.array([roles[r] for r in _PACKED], np.uint8), **_SIDE_PLANES}
    out = np.zeros((blocks[0].shape[0], _N_OUT, *blocks[0].shape[2:]), _partial_dtype(n_total))
    for block, z0 in zip(blocks, starts, strict=True):
        for i, volume in enumerate(block):
            cut = int(np.clip(planes[i] - z0, 0, volume.shape[0]))
            if cut > 0:
                _side_columns(volume[:cut], out[i], tables, low=True, first=z0, n_total=n_total)
            if cut < volume.shape[0]:
                _side_columns(volume[cut:], out[i], tables, low=False, first=z0 + cut, n_total=n_total)
    return out


def _side_columns(
    slab: np.ndarray, out: np.ndarray, tables: dict, *, low: bool, first: int, n_total: int
) -> None:
    """Add the column counts of a one-sided slab (n, a, b) to ``out`` (8, a, b) and set its face."""
    face = _slab_columns(slab, tables["pack"], [out[p] for p in tables["low" if low else "high"]], top=low)
    # Encoded so that the outermost face over the column's chunks is the maximum.
    if low:
        np.maximum(out[-2], np.where(face >= 0, face + first + 1, 0), out=out[-2], casting="unsafe")
    else:
        np.maximum(out[-1], np.where(face >= 0, n_total - (face + first), 0), out=out[-1], casting="unsafe")


def _slab_columns(slab: np.ndarray, values: np.ndarray, counts: list[np.ndarray], *, top: bool) -> np.ndarray:
    """Add the counts of the packed roles ``values`` along axis 0 to ``counts``; the face index (a, b).

    The face is the highest (``top``) or lowest slice holding the first or the last
    value of ``values`` (electrode, pit), −1 where a column has none. The slab is
    read in sub-slabs of about 1 MiB so that the masks stay in cache; within one,
    runs of identical slices (layers along the normal) are counted once, weighted.
    """
    face = np.full(slab.shape[1:], -1, np.int32)
    step = int(np.clip(_SUB_SLAB_BYTES // max(1, slab[0].size), 1, _U8_SLICES))
    scratch = np.empty((3, min(step, slab.shape[0]), *slab.shape[1:]), np.uint8)
    acc = np.empty(slab.shape[1:], np.uint8)
    for z in range(0, slab.shape[0], step):
        rows, ends = _distinct_rows(slab[z : z + step])
        masks = scratch[:, : rows.shape[0]]
        face_mask = _sub_slab_counts(rows, ends, values, counts, masks, acc)
        if face_mask is not None:
            face = _outermost(face_mask, z, ends, face, masks[2], top=top)
    return face


def _distinct_rows(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slices of ``part`` (k, a, b) that differ from the one before, and where each run of them ends.

    Label columns are piecewise constant along the normal, so a sub-slab of 64
    slices holds a handful of distinct ones: the masks below then cost a few slices,
    not 64. One word-wise comparison of each slice with the next finds them.

    Returns
    -------
    rows : ndarray (r, a, b)
        ``part`` itself when most slices differ (no copy), else the first slice of each run.
    ends : ndarray of uint8 (r,)
        End (exclusive) of each run within ``part``, so ``ends[-1] == k`` (k ≤ 255).
    """
    k = part.shape[0]
    flat = part.reshape(k, -1)
    words = _as_words(flat)
    starts = np.flatnonzero(np.concatenate([[True], (words[1:] != words[:-1]).any(axis=1)]))
    if 2 * starts.size > k:  # mostly distinct (random labels): a copy would cost more than it saves
        return part, np.arange(1, k + 1, dtype=np.uint8)
    return part[starts], np.append(starts[1:], k).astype(np.uint8)


def _as_words(flat: np.ndarray) -> np.ndarray:
    """``flat`` (k, m) uint8 viewed as the widest unsigned words that divide a row (8× fewer compares)."""
    if flat.flags.c_contiguous:
        for dtype in (np.uint64, np.uint32, np.uint16):
            if flat.shape[1] % np.dtype(dtype).itemsize == 0:
                return flat.view(dtype)
    return flat


def _sub_slab_counts(
    rows: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
    counts: list[np.ndarray],
    masks: np.ndarray,
    acc: np.ndarray,
) -> np.ndarray | None:
    """Add the counts of the runs ``rows`` (r, a, b) ending at ``ends`` to ``counts``; the face mask, or None.

    ``masks`` (3, r, a, b) uint8 is scratch: the face mask, a class mask, and the weighted mask.
    """
    faces, scratch, weighted = masks
    lengths = np.diff(ends, prepend=np.uint8(0))[:, None, None]  # run lengths, ≤ 255
    lo, hi = int(rows.min()), int(rows.max())
    face_mask = None
    # A value outside [min, max] is absent: most sub-slabs hold one to three classes.
    for i in (i for i, value in enumerate(values) if lo <= value <= hi):
        if hi == 1 and values[i] == 1:  # labels of only 0 and 1 are their own mask
            target = rows.view(np.uint8)
        else:
            is_face = i == 0 or (i == len(values) - 1 and face_mask is None)
            target = np.equal(rows, values[i], out=(faces if is_face else scratch).view(bool)).view(np.uint8)
        # Weighted by run length; a sum of ≤ 255 slices cannot overflow uint8 and stays in SIMD lanes.
        term = target if rows.shape[0] == ends[-1] else np.multiply(target, lengths, out=weighted)
        counts[i] += np.add.reduce(term, axis=0, out=acc)
        if i in (0, len(values) - 1):
            face_mask = target if face_mask is None else np.bitwise_or(face_mask, target, out=faces)
    return face_mask


def _outermost(
    faces: np.ndarray, z: int, ends: np.ndarray, face: np.ndarray, scratch: np.ndarray, *, top: bool
) -> np.ndarray:
    """Update ``face`` (a, b) with the face runs ``faces`` (r, a, b) of the sub-slab at ``z`` ending at ``ends``."""
    k = int(ends[-1])
    starts = np.concatenate([[0], ends[:-1]]).astype(np.uint8)
    # One weighted max finds the outermost face run: its last slice (top), or its first.
    weights = ends if top else (k - starts).astype(np.uint8)
    weighted = np.multiply(faces, weights[:, None, None], out=scratch)
    best = np.maximum.reduce(weighted, axis=0).astype(np.int32)  # 0: no face in this sub-slab
    if top:  # later sub-slabs lie higher
        return np.where(best > 0, z + best - 1, face)
    return np.where((best > 0) & (face < 0), z + k - best, face)


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
    voxels = counts.sum(axis=(2, 3), dtype=np.int64)
    volume = voxels * voxel**3
    thickness = volume / (float(np.prod(counts.shape[2:])) * voxel**2)
    index = SPLIT_CLASSES.index
    sides = [thickness[:, index(a)] + thickness[:, index(b)] for a, b in _SIDE_CLASSES]
    # name=False: a token would hash every count
    plane = (1, 1, *counts.shape[2:])
    planes = counts if isinstance(counts, da.Array) else da.from_array(counts, chunks=plane, name=False)
    xp = da if isinstance(counts, da.Array) else np
    # Pearson r is scale-free: the counts give the thickness maps' r without the µm copies.
    coloc = [_pearson(counts[:, index(a)], counts[:, index(b)]) for a, b in pairs]
    return {
        "voxels": voxels,
        "volume": volume,
        "thickness": thickness,
        "sides": xp.stack(sides, axis=1),
        "tmap": planes.map_blocks(_scaled, voxel, dtype=np.float32),
        "density": planes.map_blocks(_scaled, 1.0 / n_total, dtype=np.float32),
        "area": _nonzero_planes(counts) / float(np.prod(counts.shape[2:])),
        "coloc": xp.stack(coloc, axis=1) if coloc else np.zeros((counts.shape[0], 0)),
    }


def _nonzero_planes(counts):
    """Non-zero columns per plane (T, C, A, B) → (T, C)."""
    if isinstance(counts, da.Array):
        return da.count_nonzero(counts, axis=(2, 3))
    # plane by plane: count_nonzero over a whole array takes numpy's fast path, over axes it does not (6×)
    flat = counts.reshape(-1, counts.shape[2] * counts.shape[3])
    return np.array([np.count_nonzero(plane) for plane in flat]).reshape(counts.shape[:2])


def _scaled(counts: np.ndarray, factor: float) -> np.ndarray:
    return np.multiply(counts, np.float32(factor), dtype=np.float32)


def _pearson(a, b):
    """Pearson r over the plane of two maps (T, A, B), as ``xarray.corr`` (NaN for a constant map)."""
    if isinstance(a, da.Array):
        return da.map_blocks(_pearson, a.rechunk((1, -1, -1)), b.rechunk((1, -1, -1)), drop_axis=(1, 2))
    return np.array([_pearson_plane(x, y) for x, y in zip(a, b, strict=True)])


def _pearson_plane(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two (A, B) maps, with float64 temporaries of one plane (not of the whole series)."""
    a = a - a.mean(dtype=np.float64)
    b = b - b.mean(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.vdot(a, b) / np.sqrt(np.vdot(a, a) * np.vdot(b, b)))


def _edges_um(faces, axis: tuple[float, int, float], side: str):
    """Face positions (T, side, A, B) in µm along the normal, NaN where a column has none.

    ``axis`` is (first slice position in µm, slices along the normal, voxel size in µm).
    Lazy plane views of the faces, as the thickness maps: float32 copies of them would
    be made on every call, 8× the uint16 faces' memory.
    """
    planes = (
        faces.rechunk({1: 1})
        if isinstance(faces, da.Array)
        else da.from_array(faces, chunks=(1, 1, *faces.shape[2:]), name=False)
    )
    um = planes.map_blocks(_face_um, *axis, dtype=np.float32)
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
    count = xp.count_nonzero(faces, axis=(2, 3))
    total = faces.sum(axis=(2, 3), dtype=np.int64)
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
