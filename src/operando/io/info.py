"""A human-readable summary of an operando dataset (``operando info``).

Reads metadata only (zarr.json files and chunk listings), never array data, so it
is instant on a dataset of any size and works on incomplete datasets too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from operando.io.store import COMPLETE_ATTR, missing_chunks, open_root

__all__ = ["ArraySummary", "DatasetSummary", "describe", "summarize"]


@dataclass(frozen=True)
class ArraySummary:
    """One array of a dataset: its layout on disk and, for 1-D coordinates, its range."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    codec: str
    units: str
    nbytes: int
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class DatasetSummary:
    """What ``operando info`` prints."""

    path: Path
    complete: str | None
    missing: dict[str, tuple[int, int, tuple[int, ...] | None]]
    disk_bytes: int
    attrs: dict[str, object]
    variables: list[ArraySummary] = field(default_factory=list)
    coords: list[ArraySummary] = field(default_factory=list)
    groups: dict[str, DatasetSummary] = field(default_factory=dict)


def summarize(path: str | Path, *, _group: str | None = None) -> DatasetSummary:
    """Summarize the dataset at ``path`` from its metadata."""
    path = Path(path)
    root = open_root(path)
    arrays = [_summarize_array(name, arr) for name, arr in sorted(root.arrays())]
    coord_names = {a.name for a in arrays if a.dims == (a.name,)}
    return DatasetSummary(
        path=path,
        complete=root.attrs.get(COMPLETE_ATTR) if _group is None else None,
        missing=missing_chunks(path) if _group is None else {},
        disk_bytes=_disk_bytes(path),
        attrs={k: v for k, v in root.attrs.items() if not k.startswith("operando:")},
        variables=[a for a in arrays if a.name not in coord_names],
        coords=[a for a in arrays if a.name in coord_names],
        groups={name: summarize(path / name, _group=name) for name, _ in sorted(root.groups())},
    )


def _summarize_array(name: str, arr: zarr.Array) -> ArraySummary:
    dims = tuple(arr.metadata.dimension_names or (f"dim_{i}" for i in range(arr.ndim)))
    codec = ", ".join(_codec_name(c) for c in arr.compressors) or "none"
    value_range = None
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.number) and arr.shape[0]:
        values = arr[:]  # coordinates are small 1-D arrays
        value_range = (float(np.nanmin(values)), float(np.nanmax(values)))
    return ArraySummary(
        name=name,
        dims=dims,
        shape=tuple(arr.shape),
        chunks=tuple(arr.chunks),
        dtype=str(arr.dtype),
        codec=codec,
        units=str(arr.attrs.get("units", "")),
        nbytes=int(arr.nbytes),
        value_range=value_range,
    )


def _codec_name(codec: object) -> str:
    cname = getattr(codec, "cname", None)
    if cname is not None:
        shuffle = getattr(codec, "shuffle", None)
        return f"blosc {getattr(cname, 'value', cname)} {getattr(shuffle, 'value', shuffle)} level {codec.clevel}"
    level = getattr(codec, "level", None)
    return f"{type(codec).__name__.removesuffix('Codec').lower()}" + (
        f" level {level}" if level is not None else ""
    )


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(path: str | Path) -> str:
    """The text ``operando info`` prints for the dataset at ``path``."""
    s = summarize(path)
    lines = [f"dataset   {s.path}", f"status    {_status(s)}", f"on disk   {_size(s.disk_bytes)}"]
    lines += _describe_body(s, indent="")
    return "\n".join(lines)


def _describe_body(s: DatasetSummary, indent: str) -> list[str]:
    lines = [f"{indent}variables"]
    for a in s.variables:
        ratio = a.nbytes / max(_disk_bytes(s.path / a.name), 1)
        lines.append(
            f"{indent}  {a.name:<14} ({', '.join(a.dims)})  shape {a.shape}  chunks {a.chunks}  {a.dtype}"
            f"  {_size(a.nbytes)} raw, ratio {ratio:.1f}  codec {a.codec}"
            + (f"  [{a.units}]" if a.units else "")
        )
    lines.append(f"{indent}coordinates")
    for a in s.coords:
        rng = f"{a.value_range[0]:g} .. {a.value_range[1]:g}" if a.value_range else ""
        lines.append(f"{indent}  {a.name:<14} {a.shape[0]:>6} values  {rng} {a.units}".rstrip())
    if s.attrs:
        lines.append(f"{indent}attributes")
        lines += [f"{indent}  {k} = {_short(v)}" for k, v in sorted(s.attrs.items())]
    for name, g in s.groups.items():
        lines.append(f"{indent}group {name}/")
        lines += _describe_body(g, indent + "  ")
    return lines


def _status(s: DatasetSummary) -> str:
    if s.complete:
        return f"complete (marked {s.complete})"
    if s.missing:
        parts = ", ".join(f"{k}: {n}/{t} chunks missing" for k, (n, t, _) in s.missing.items())
        return f"INCOMPLETE ({parts})"
    return "INCOMPLETE (all chunks present, but never marked complete)"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _short(value: object, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
