"""Report parts shared by CT and XANES runs: dataset summaries, figures, CSV tables, provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

import operando
from operando.io.info import DatasetSummary, summarize
from operando.report.html import details, esc, figure, frame_table, key_values, note, section, table, tag
from operando.report.runs import (
    Run,
    is_zarr,
    read_timings,
    sha256_file,
    zarr_attributes,
    zarr_metadata_sha256,
)

__all__ = [
    "csv_block",
    "dataset_summary",
    "figures",
    "other_figures",
    "provenance",
    "timings_table",
    "zarr_stores",
]

#: (glob patterns, caption) of one kind of figure; every match is shown, in name order.
FigureSpec = tuple[Sequence[str], str]


def zarr_stores(folder: Path) -> list[Path]:
    """The zarr stores directly in ``folder``."""
    return sorted(p for p in folder.glob("*.zarr") if p.is_dir() and is_zarr(p))


def dataset_summary(store: Path, *, relative_to: Path) -> str:
    """Layout of one zarr store from its metadata: variables, chunks, coordinate ranges, size."""
    s = summarize(store)
    status = "complete" + (f" ({s.complete})" if isinstance(s.complete, str) else "")
    if not s.complete:
        missing = sum(n for n, _, _ in s.missing.values())
        status = f"INCOMPLETE, {missing} chunks missing" if missing else "not marked complete"
    head = tag(
        "p", f"{tag('code', esc(store.relative_to(relative_to)))} — {esc(status)}, {_size(s.disk_bytes)}"
    )
    body = head + _arrays(s)
    for name, group in s.groups.items():
        body += tag("p", f"group {tag('code', esc(name))}") + _arrays(group)
    return body


def _arrays(s: DatasetSummary) -> str:
    var_rows = [
        (a.name, " × ".join(a.dims), _tuple(a.shape), _tuple(a.chunks), a.dtype, a.codec, a.units)
        for a in s.variables
    ]
    columns = ("variable", "dims", "shape", "chunks", "dtype", "codec", "units")
    coord_rows = [
        (a.name, a.shape[0], *(a.value_range or (float("nan"), float("nan"))), a.units) for a in s.coords
    ]
    out = table(columns, var_rows) if var_rows else note("no variables")
    if coord_rows:
        out += table(("coordinate", "values", "from", "to", "units"), coord_rows)
    scalars = {k: v for k, v in s.attrs.items() if isinstance(v, str | int | float | bool)}
    return out + (key_values(scalars, caption="scalar attributes") if scalars else "")


def _tuple(values: Sequence[int]) -> str:
    return " × ".join(map(str, values))


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.1f} {units[k]}" if k else f"{int(n)} B"


def figures(folder: Path, specs: Sequence[FigureSpec], *, used: set[Path]) -> str:
    """Each spec's PNGs in ``folder`` (added to ``used``), or a note naming the missing figure."""
    parts = []
    for patterns, caption in specs:
        found = sorted({p for pattern in patterns for p in folder.glob(pattern)} - used)
        if not found:
            parts.append(note(f"no {caption.lower()} figure ({', '.join(patterns)}) in {folder.name}/"))
        for path in found:
            used.add(path)
            parts.append(figure(path, f"{caption} — {path.name}"))
    return "".join(parts)


def other_figures(folder: Path, *, used: set[Path]) -> str:
    """PNGs in ``folder`` that no spec claimed, so that nothing a run drew is hidden."""
    rest = sorted(set(folder.glob("*.png")) - used)
    return "".join(figure(p, p.name) for p in rest)


def csv_block(
    path: Path, caption: str, *, pivot: tuple[str, str, str] | None = None, max_rows: int = 40
) -> str:
    """A CSV as a table (optionally pivoted ``(index, columns, values)``), or a note if absent."""
    if not path.is_file():
        return note(f"{path.name} not found; {caption.lower()} not shown")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        return note(f"{path.name} cannot be read as CSV ({exc}); {caption.lower()} not shown")
    if pivot is not None:
        try:
            frame = _pivot(frame, *pivot)
        except (KeyError, ValueError) as exc:  # another layout than the pipeline's: show it as it is
            return note(f"{path.name} cannot be pivoted ({exc})") + frame_table(frame, max_rows=max_rows)
    return frame_table(frame, caption=f"{caption} ({path.name})", max_rows=max_rows)


def _pivot(frame: pd.DataFrame, index: str, columns: str, values: str) -> pd.DataFrame:
    order = list(pd.unique(frame[columns]))  # keep the file's order, not alphabetical
    wide = frame.pivot(index=index, columns=columns, values=values)[order]
    wide.columns = [str(c) for c in wide.columns]
    return wide


def timings_table(timings: dict[str, float], caption: str) -> str:
    """Steps and their seconds, with the total."""
    rows = [*timings.items(), ("total", sum(timings.values()))]
    return table(("step", "seconds"), rows, caption=caption)


def provenance(run: Run, *, out_dir: Path, extra_files: Sequence[Path] = ()) -> str:
    """Versions, stored parameters, model header, checksums and timings of one run."""
    stores = zarr_stores(run.root) + zarr_stores(run.stats_dir if run.kind == "ct" else run.root)
    stores = sorted(set(stores))
    attrs = {s: zarr_attributes(s) for s in stores}
    versions = {"report written by operando": operando.__version__}
    versions |= {
        f"{s.relative_to(out_dir)} written by operando": a["operando:version"]
        for s, a in attrs.items()
        if "operando:version" in a
    }
    body = key_values(versions, caption="versions")
    for store, a in attrs.items():
        params = {k: v for k, v in a.items() if not k.startswith("operando:")}
        if params:
            body += details(f"parameters stored in {store.relative_to(out_dir)}", key_values(params))
    models = [_model_path(str(a["model"]), run.root) for a in attrs.values() if "model" in a]
    body += "".join(_model_header(m) for m in models)
    files = _small_files(run) + [m for m in models if m.is_file()] + list(extra_files)
    body += _checksums(files, stores, out_dir)
    timings = read_timings(run.root) if run.root != out_dir else None
    if timings:
        body += timings_table(timings, f"timings ({run.name}/timings.json)")
    return section(f"{run.anchor}-provenance", "Provenance", body, level=3)


def _model_path(recorded: str, root: Path) -> Path:
    """The weights file as recorded, else beside the run (a relative path was relative to the old cwd)."""
    path = Path(recorded)
    for candidate in (path, root / path, root / path.name, root.parent / path.name):
        if candidate.is_file():
            return candidate
    return path


def _model_header(path: Path) -> str:
    if not path.is_file():
        return note(f"model {path} not found here; its header is not shown")
    from operando.models.weights import read_header  # torch: imported only when a model is there

    h = read_header(path)
    fields = {
        "file": str(path),
        "architecture": h.architecture,
        "arguments": h.arguments,
        "classes": list(h.classes),
        "normalization": None if h.normalization is None else asdict(h.normalization),
        "provenance": h.provenance,
        "operando_version": h.operando_version,
    }
    return key_values(fields, caption=f"model header ({path.name})")


def _small_files(run: Run) -> list[Path]:
    folders = {run.root, run.stats_dir} if run.kind == "ct" else {run.root}
    return sorted(
        p for f in folders for pattern in ("*.csv", "*.json") for p in f.glob(pattern) if p.is_file()
    )


def _checksums(files: Sequence[Path], stores: Sequence[Path], out_dir: Path) -> str:
    rows = [
        (_label(f, out_dir), "file", _size(f.stat().st_size), sha256_file(f)) for f in dict.fromkeys(files)
    ]
    for store in stores:
        digest, n = zarr_metadata_sha256(store)
        rows.append((_label(store, out_dir), f"zarr metadata ({n} zarr.json)", "", digest))
    caption = "SHA-256 checksums (files in full; zarr stores: their metadata only)"
    return table(("path", "what", "size", "sha256"), rows, caption=caption, max_rows=200)


def _label(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path)
