"""Small HTML builders for the run report: every text passes through :func:`esc`.

A builder returns an HTML fragment (``str``); fragments nest by string
concatenation, so a fragment is always trusted HTML and everything else (file
names, CSV cells, attributes, JSON) is escaped exactly once, where it enters.
The page is self-contained: CSS and a small check script inline, figures as
``data:`` URIs, and a Content-Security-Policy that forbids any other source.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "CHECK_SCRIPT",
    "details",
    "esc",
    "figure",
    "frame_table",
    "key_values",
    "note",
    "page",
    "section",
    "table",
    "tag",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT = 400  # characters of one attribute / JSON value before it is cut

#: Runs on ``load``: every image decoded and no error event, else the reasons, in
#: ``<body data-check>``; a headless browser's DOM dump shows the verdict.
CHECK_SCRIPT = """
(function () {
  var problems = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    problems.push(t && t.tagName ? "cannot load <" + t.tagName.toLowerCase() + "> " + (t.alt || "")
                                 : String(e.message));
  }, true);
  window.addEventListener("load", function () {
    var images = document.images;
    for (var i = 0; i < images.length; i++) {
      if (!(images[i].complete && images[i].naturalWidth > 0)) {
        problems.push("image not decoded: " + images[i].alt);
      }
    }
    document.body.dataset.images = String(images.length);
    document.body.dataset.check = problems.length ? problems.join("; ") : "ok";
  });
})();
"""

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #1b1b1b; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
h3 { margin-top: 1.5em; color: #345; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: right; vertical-align: top; }
th { background: #eef1f4; }
td.text, th.text { text-align: left; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .2em; }
tr.gap td { text-align: center; color: #777; font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 12.5px; }
p.note { color: #7a4b00; background: #fff6e0; padding: .3em .6em; border-left: 3px solid #e0a000; }
code, pre { font: 12px ui-monospace, monospace; }
pre { white-space: pre-wrap; word-break: break-all; margin: 0; }
nav ul { columns: 2; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def tag(name: str, body: str = "", /, **attrs: object) -> str:
    """``<name attrs>body</name>``; ``body`` is HTML, attributes are escaped (``class_`` → ``class``)."""
    text = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None
    )
    return f"<{name}{text}>{body}</{name}>"


def note(text: str) -> str:
    """A visible remark, e.g. why a part of the run is missing from the page."""
    return tag("p", esc(text), class_="note")


def section(anchor: str, title: str, body: str, *, level: int = 2) -> str:
    """A titled ``<section id=anchor>``."""
    return tag("section", tag(f"h{level}", esc(title)) + body, id=anchor)


def details(summary: str, body: str) -> str:
    """A collapsed block (long parameters), open on click without JavaScript."""
    return tag("details", tag("summary", esc(summary)) + body)


def figure(path: Path, caption: str) -> str:
    """The PNG at ``path`` embedded as a ``data:`` URI, or a note when it is not a PNG."""
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return note(f"{path.name} is not a PNG file; not shown")
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return tag("figure", f'<img src="{src}" alt="{esc(path.name)}">' + tag("figcaption", esc(caption)))


def cell(value: object) -> str:
    """One table value as text: numbers to 6 significant digits, NaN as an en dash."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "–" if math.isnan(value) else f"{float(value):.6g}"
    if isinstance(value, str):
        return value
    return short_json(value)


def short_json(value: object, limit: int = _MAX_TEXT) -> str:
    """Compact JSON (or ``str``) of ``value``, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, separators=(", ", ": "), default=str)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    caption: str | None = None,
    max_rows: int = 40,
) -> str:
    """A table of ``rows``; beyond ``max_rows`` only the first and last halves are shown."""
    rows = list(rows)
    shown: list[Sequence[object] | None] = list(rows)
    if len(rows) > max_rows:
        half = max_rows // 2
        shown = [*rows[:half], None, *rows[-half:]]
    head = "".join(tag("th", esc(c)) for c in columns)
    body = [tag("tr", head)]
    for row in shown:
        if row is None:
            gap = f"… {len(rows) - 2 * (max_rows // 2)} rows not shown …"
            body.append(tag("tr", tag("td", esc(gap), colspan=len(columns)), class_="gap"))
            continue
        texts = [cell(v) for v in row]
        kinds = ["text" if isinstance(v, str) else None for v in row]
        body.append(
            tag("tr", "".join(tag("td", esc(t), class_=k) for t, k in zip(texts, kinds, strict=True)))
        )
    return tag("table", (tag("caption", esc(caption)) if caption else "") + "".join(body))


def frame_table(frame: pd.DataFrame, *, caption: str | None = None, max_rows: int = 40) -> str:
    """A DataFrame as :func:`table`, its (named) index as the first columns."""
    flat = frame.reset_index() if any(n is not None for n in frame.index.names) else frame
    columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in flat.columns]
    return table(columns, flat.itertuples(index=False), caption=caption, max_rows=max_rows)


def key_values(mapping: Mapping[str, object], *, caption: str | None = None) -> str:
    """A two-column table of names and values (JSON for anything that is not a plain number)."""
    rows = [(str(k), tag("pre", esc(cell(v)))) for k, v in mapping.items()]
    body = "".join(tag("tr", tag("th", esc(k), class_="text") + tag("td", v, class_="text")) for k, v in rows)
    return tag("table", (tag("caption", esc(caption)) if caption else "") + body)


def page(title: str, body: str) -> str:
    """The whole HTML document: inline CSS, the check script, no external request allowed."""
    head = (
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        + tag("title", esc(title))
        + tag("style", _CSS)
        + tag("script", CHECK_SCRIPT)
    )
    return "<!DOCTYPE html>\n" + tag("html", tag("head", head) + tag("body", body), lang="en") + "\n"
