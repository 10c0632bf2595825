"""``operando report``: one self-contained HTML page describing the runs in an output folder.

The page holds, per CT or XANES run found in the folder (see
:func:`~operando.report.runs.find_runs`), the datasets' layout (from their zarr
metadata only), the tables the pipeline wrote, its figures embedded as PNG
``data:`` URIs, and the run's provenance: versions, stored parameters, the model's
header, SHA-256 checksums and timings. It makes no external request and needs no
server: mail it, archive it, open it anywhere.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from pathlib import Path

import operando
from operando.errors import DatasetLayoutError, InputNotFoundError, OutputExistsError
from operando.report.common import dataset_summary, timings_table, zarr_stores
from operando.report.ct import ct_section
from operando.report.html import esc, note, page, section, tag
from operando.report.runs import Run, find_runs, read_timings
from operando.report.xanes import xanes_section

__all__ = ["add_report_verb", "render_report", "write_report"]


def render_report(out_dir: str | Path, *, title: str | None = None, max_depth: int = 3) -> str:
    """The HTML page of every run in ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        A run folder (``operando ct run`` / ``operando xanes run`` output) or a folder
        holding several, at most ``max_depth`` levels down.
    title : str, optional, keyword-only
        Page title (default: ``operando report — <folder name>``).
    max_depth : int, keyword-only
        How deep to look for runs.

    Raises
    ------
    InputNotFoundError
        ``out_dir`` is not a folder.
    DatasetLayoutError
        No run in it.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputNotFoundError(out, "is not a folder")
    runs = find_runs(out, max_depth=max_depth)
    if not runs:
        raise DatasetLayoutError(
            out,
            f"holds no CT run (stats/stats.csv) nor XANES run (tracks.csv) within {max_depth} levels",
            remedy="Pass the folder given to `operando ct run -o` or `operando xanes run -o`.",
        )
    title = title or f"operando report — {out.resolve().name}"
    body = tag("h1", esc(title)) + _header(out, runs)
    timings = read_timings(out)
    if timings:
        body += section("timings", "Timings", timings_table(timings, "timings.json"))
    for run in runs:
        body += ct_section(run, out_dir=out) if run.kind == "ct" else xanes_section(run, out_dir=out)
    # inputs kept beside the runs (demo layout: OUT/cell.zarr, OUT/ct/, OUT/xanes/)
    loose = zarr_stores(out) if out not in {r.root for r in runs} else []
    if loose:
        body += section(
            "inputs", "Other datasets", "".join(dataset_summary(s, relative_to=out) for s in loose)
        )
    return page(title, body)


def _header(out: Path, runs: list[Run]) -> str:
    when = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    facts = f"Folder {tag('code', esc(out.resolve()))}; written {esc(when)} by operando {esc(operando.__version__)}."
    items = "".join(
        tag("li", tag("a", esc(f"{r.kind.upper()} run: {r.name}"), href=f"#{r.anchor}")) for r in runs
    )
    return tag("p", facts) + tag("nav", tag("ul", items)) + _missing_kinds(runs)


def _missing_kinds(runs: list[Run]) -> str:
    kinds = {r.kind for r in runs}
    missing = [k.upper() for k in ("ct", "xanes") if k not in kinds]
    return note(f"no {' or '.join(missing)} run in this folder") if missing else ""


def write_report(
    out_dir: str | Path,
    output: str | Path | None = None,
    *,
    title: str | None = None,
    overwrite: bool = False,
    max_depth: int = 3,
) -> Path:
    """Write :func:`render_report` of ``out_dir`` to ``output`` (default ``out_dir/report.html``).

    The file appears whole or not at all (written beside it, then renamed).

    Raises
    ------
    OutputExistsError
        ``output`` exists and not ``overwrite``.
    InputNotFoundError, DatasetLayoutError
        See :func:`render_report`.
    """
    output = Path(output) if output is not None else Path(out_dir) / "report.html"
    if output.exists() and not overwrite:
        raise OutputExistsError(output, "exists already", remedy="Pass --overwrite or another -o path.")
    text = render_report(out_dir, title=title, max_depth=max_depth)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, output)
    return output


def add_report_verb(verbs: argparse._SubParsersAction) -> None:
    """Add ``operando report OUT [-o report.html]`` to the top-level verbs."""
    p = verbs.add_parser("report", help="one self-contained HTML page of a run folder (CT and/or XANES)")
    p.add_argument(
        "out_dir", type=Path, help="output folder of `operando ct run` / `xanes run` (or a parent)"
    )
    p.add_argument("-o", "--output", type=Path, help="HTML file to write (default OUT/report.html)")
    p.add_argument("--title", help="page title")
    p.add_argument("--depth", type=int, default=3, help="how many folder levels to search for runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing HTML file")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    path = write_report(
        args.out_dir, args.output, title=args.title, overwrite=args.overwrite, max_depth=args.depth
    )
    print(f"wrote {path}")
