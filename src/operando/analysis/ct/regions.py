"""Regions of a segmented Li-metal cell: crops, class roles and the split by depth.

The model labels both electrodes ``electrode`` and all uniformly plated Li
``deposited``; as in the paper, the cell is cut by a plane parallel to the
electrodes, halfway between them, and each class is renamed by its side:
electrode → ``stripping_electrode`` / ``plating_electrode``, deposited Li →
``redeposited_li`` (stripping side) / ``deposited_li`` (plating side).

The plane is found from the data, per timestep: the electrode voxel count per
slice along the normal, on a strided subset of in-plane chunk columns (about one
in sixteen, see :func:`sample_blocks`). The gap is the longest run of slices
whose electrode fraction is below one half; the plane is its middle. The split
is a small task in the statistics graph (:func:`split_by_depth`), so the sampled
chunks are read once, for it and for their columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import dask.array as da
import numpy as np

from operando.analysis.ct._runs import slice_counts
from operando.errors import AxisError, ClassNameError, ConfigError, CropError, LabelRangeError

__all__ = [
    "ROLES",
    "SIDES",
    "SIDE_CLASSES",
    "SPLIT_CLASSES",
    "choose_plating_side",
    "parse_crop",
    "resolve_normal",
    "resolve_roles",
    "sample_blocks",
    "split_by_depth",
    "split_planes",
]

#: The model's classes, by role (matched by name; rename with ``class_names``).
ROLES = ("background", "electrode", "deposited", "dendrite", "pit")
#: Classes after the split by depth, in output order.
SPLIT_CLASSES = (
    "background",
    "stripping_electrode",
    "plating_electrode",
    "deposited_li",
    "redeposited_li",
    "dendrite",
    "pit",
)
SIDES = ("stripping", "plating")
#: The split classes of each side: (its electrode, its Li layer).
SIDE_CLASSES = {
    "stripping": ("stripping_electrode", "redeposited_li"),
    "plating": ("plating_electrode", "deposited_li"),
}

_CROP_ITEM = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")


def parse_crop(text: str | None, sizes: Mapping[str, int]) -> dict[str, slice]:
    """Parse ``"y=12:-12,x=12:-12"`` into ``{dim: slice}`` of voxel indices.

    Parameters
    ----------
    text : str or None
        Comma-separated ``dim=start:stop`` items; negative bounds count from the
        end, missing ones mean the edge. None or "" selects everything.
    sizes : mapping of str to int
        Length of every dimension the crop may name.

    Returns
    -------
    dict of str to slice
        Non-negative, non-empty slices, one per named dimension.

    Raises
    ------
    CropError
        Bad syntax, a dimension not in ``sizes`` (or named twice), or a range that
        selects nothing inside the volume.
    """
    out: dict[str, slice] = {}
    for item in filter(str.strip, (text or "").split(",")):
        match = _CROP_ITEM.match(item)
        if match is None:
            raise CropError("crop", f"{item.strip()!r} is not dim=start:stop")
        dim, start, stop = match.group(1), match.group(2), match.group(3)
        if dim not in sizes or dim in out:
            problem = "is named twice" if dim in out else f"is not a dimension of the data {tuple(sizes)}"
            raise CropError("crop", f"{dim!r} {problem}")
        out[dim] = _crop_slice(dim, start, stop, int(sizes[dim]))
    return out


def _crop_slice(dim: str, start: str | None, stop: str | None, size: int) -> slice:
    lo, hi, _ = slice(None if start is None else int(start), None if stop is None else int(stop)).indices(
        size
    )
    bad = [int(v) for v in (start, stop) if v is not None and not -size <= int(v) <= size]
    if bad or hi <= lo:
        raise CropError(
            "crop", f"{dim}={start or ''}:{stop or ''} selects nothing inside {dim}'s {size} voxels"
        )
    return slice(lo, hi)


def resolve_normal(dims: tuple[str, ...], normal_axis: str | None, attrs: Mapping) -> str:
    """The electrode normal: ``normal_axis``, else the ``normal_axis`` attribute, else ``"z"``."""
    name = normal_axis or attrs.get("normal_axis") or "z"
    spatial = tuple(d for d in dims if d != "time")
    if name not in spatial:
        raise AxisError("normal_axis", f"{name!r} is not a spatial dimension of the labels {spatial}")
    return name


def resolve_roles(classes: Mapping[int, str], class_names: Mapping[str, str] | None = None) -> dict[str, int]:
    """Label value of every role in :data:`ROLES`.

    Parameters
    ----------
    classes : mapping of int to str
        ``{value: name}`` of the labels (:func:`operando.io.layout.label_classes`).
    class_names : mapping of str to str, optional
        ``{role: name in the labels}`` for labels named otherwise.

    Raises
    ------
    ClassNameError
        A role has no class, a label class has no role, or ``class_names`` names
        an unknown role.
    """
    names = {**{r: r for r in ROLES}, **(class_names or {})}
    by_name = {name: value for value, name in classes.items()}
    unknown_roles = sorted(set(names) - set(ROLES))
    missing = sorted(names[r] for r in ROLES if names[r] not in by_name)
    unmatched = sorted(set(by_name) - {names[r] for r in ROLES})
    if unknown_roles or missing or unmatched:
        parts = [
            f"unknown roles {unknown_roles} (roles: {list(ROLES)})" if unknown_roles else "",
            f"missing classes {missing}" if missing else "",
            f"classes with no role {unmatched}" if unmatched else "",
        ]
        raise ClassNameError(
            "labels",
            f"{'; '.join(p for p in parts if p)}; the labels have {sorted(by_name)}",
            remedy="Pass class_names={role: name} mapping every role to a class of the labels.",
        )
    return {r: by_name[names[r]] for r in ROLES}


def sample_blocks(numblocks: tuple[int, int], share: int = 16) -> tuple[list[int], list[int]]:
    """In-plane chunk indices of the cheap pass: about one chunk column in ``share``, spread out.

    Every ``sy``-th row and ``sx``-th column of the chunk grid, starting mid-stride,
    with ``sy · sx ≥ share`` where the grid allows: a grid one chunk wide along an
    axis (label chunks that span a whole patch plane) is thinned along the other
    one alone. One column at least.
    """
    ny, nx = numblocks
    sy = min(ny, math.ceil(math.sqrt(share)))
    sx = min(nx, math.ceil(share / sy))
    sy = min(ny, max(sy, math.ceil(share / sx)))
    return list(range(sy // 2, ny, sy)), list(range(sx // 2, nx, sx))


def split_by_depth(arr: da.Array, roles: Mapping[str, int]) -> da.Array:
    """The split plane of every timestep, lazily, from the sampled chunk columns.

    Computed in one ``dask.compute`` with the statistics pass, each sampled chunk
    is read once for both; the pass waits for the (small) split task.

    Parameters
    ----------
    arr : dask array of shape (T, N, A, B)
        Labels with the normal second.
    roles : mapping of str to int
        Label value of each role (:func:`resolve_roles`).

    Returns
    -------
    dask array of int of shape (T,)
        The split planes (:func:`split_planes`), chunked as the time axis of ``arr``.
    """
    rows, cols = sample_blocks(arr.numblocks[2:])
    sub = arr.blocks[:, :, rows].blocks[:, :, :, cols]
    # One kernel per chunk, reduced in-plane right away; the (T, N, rows, cols) partials are small.
    per_chunk = sub.map_blocks(
        _slice_counts,
        np.uint8(roles["electrode"]),
        chunks=(*sub.chunks[:2], (1,) * sub.numblocks[2], (1,) * sub.numblocks[3]),
        dtype=np.int64,
    )
    # One small task per time chunk on its partials, in the array graph: its sampled chunks stay shared
    # with the statistics pass (a delayed would embed a copy of their reads), and that time's columns
    # wait for its own plane only.
    per_time = per_chunk.rechunk((arr.chunks[0], *per_chunk.shape[1:]), method="tasks")
    area = sub.shape[2] * sub.shape[3]
    return per_time.map_blocks(
        _planes_from_counts, area, drop_axis=(1, 2, 3), chunks=(arr.chunks[0],), dtype=int
    )


def _planes_from_counts(counts: np.ndarray, area: int, block_info: dict | None = None) -> np.ndarray:
    """Per-chunk electrode voxels per slice (t, N, rows, cols) of the sample → the planes (t,)."""
    first = block_info[0]["array-location"][0][0] if block_info else 0
    return split_planes(counts.sum(axis=(2, 3)) / area, first_timestep=first)


def _slice_counts(block: np.ndarray, value: np.uint8) -> np.ndarray:
    """Voxels equal to ``value`` per slice of a chunk (t, n, a, b) → (t, n, 1, 1)."""
    out = np.empty((*block.shape[:2], 1, 1), np.int64)
    for i, volume in enumerate(block):
        out[i, :, 0, 0] = slice_counts(volume, int(value))
    return out


def split_planes(
    electrode_fraction: np.ndarray, *, threshold: float = 0.5, first_timestep: int = 0
) -> np.ndarray:
    """Index of the first plane past the middle of the gap, per timestep.

    Parameters
    ----------
    electrode_fraction : ndarray of shape (T, N)
    threshold : float, keyword-only
        Electrode fraction below which a slice belongs to the gap.
    first_timestep : int, keyword-only
        Index of the first row's timestep, for the error message.

    Returns
    -------
    ndarray of int of shape (T,)
        ``p``: slices ``< p`` lie on the low side, ``>= p`` on the high side.
    """
    return np.array(
        [_gap_middle(row, threshold, first_timestep + t) for t, row in enumerate(electrode_fraction)],
        dtype=int,
    )


def _gap_middle(row: np.ndarray, threshold: float, t: int) -> int:
    low = np.concatenate([[False], row < threshold, [False]])
    edges = np.flatnonzero(np.diff(low.astype(np.int8)))
    starts, stops = edges[::2], edges[1::2]
    if starts.size == 0:
        raise LabelRangeError(
            f"labels (timestep {t})",
            f"no gap between the electrodes: every slice is ≥ {threshold:.0%} electrode",
            remedy="Check normal_axis and the electrode class name.",
        )
    longest = np.argmax(stops - starts)
    return int((starts[longest] + stops[longest] + 1) // 2)


def choose_plating_side(low: np.ndarray, high: np.ndarray) -> str:
    """``"high"`` or ``"low"``: the side whose deposited-Li volume grows during charge.

    Charge is taken as the first half of the timesteps (at least two): the side
    whose deposited count rises most from the first timestep is the plating side
    (during discharge the Li moves back, so later timesteps would mislead).

    Parameters
    ----------
    low, high : ndarray of shape (T,)
        Deposited voxels below and above the split plane, per timestep.
    """
    first = max(2, (len(low) + 1) // 2)
    growth = {"low": int((low[:first] - low[0]).max()), "high": int((high[:first] - high[0]).max())}
    if len(low) < 2 or growth["low"] == growth["high"]:
        raise ConfigError(
            "plating_side",
            f"'auto' cannot tell the plating side: deposited Li grows by {growth} voxels over charge",
            remedy="Pass plating_side='high' or 'low'.",
        )
    return max(growth, key=growth.get)
