"""Read-only readers for reference XAS spectra: Athena projects and XDI files.

Athena (Demeter) saves a project as gzipped Perl source: per group a
``$old_group = 'name';`` line, an ``@args = (key, value, ...);`` list with the
processing parameters, and ``@x``/``@y`` arrays of energy and μ(E). The file is
never evaluated; :func:`read_athena` tokenizes only the ``@args``, ``@x`` and
``@y`` list literals (quoted strings, bare numbers and nested ``[...]`` lists)
and ignores every other statement (``$xdi = bless(...)``, journal, ...).

XDI files are text with ``#``-prefixed headers naming the columns
(``# Column.1: energy eV``) followed by whitespace-separated numbers.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operando.errors import InputNotFoundError, UnsupportedFormatError

__all__ = ["BKG_KEYS", "AthenaGroup", "read_athena", "read_xdi"]

BKG_KEYS = ("bkg_e0", "bkg_step", "bkg_pre1", "bkg_pre2", "bkg_nor1", "bkg_nor2", "bkg_nnorm", "bkg_eshift")

_STATEMENT = re.compile(r"^(?P<name>@args|@x|@y|\$old_group)\s*=\s*(?P<value>.*);\s*$")
_TOKEN = re.compile(r"'(?:[^'\\]|\\.)*'|\[|\]|,|=>|[^\s,\[\]'()]+")


@dataclass(frozen=True)
class AthenaGroup:
    """One group of an Athena project.

    Attributes
    ----------
    name : str
        Athena's internal group name (``$old_group``).
    label : str
        The label shown in Athena (e.g. ``"NiO.000"``).
    energy, mu : ndarray of shape (N,)
        The stored ``@x`` and ``@y`` arrays (energy in eV, without ``bkg_eshift``).
    params : dict
        ``bkg_*`` parameters as floats (:data:`BKG_KEYS` among them, when stored).
    """

    name: str
    label: str
    energy: np.ndarray
    mu: np.ndarray
    params: dict[str, float] = field(default_factory=dict)


def read_athena(path: str | Path) -> list[AthenaGroup]:
    """Groups of an Athena project file (``.prj``, gzipped or plain), in file order.

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    UnsupportedFormatError
        The file is not an Athena project, or a group lacks ``@x``/``@y``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(path, "no such Athena project file")
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    if not lines or "Athena project file" not in lines[0]:
        raise UnsupportedFormatError(path, "first line is not '# Athena project file'")
    groups, current = [], {}
    for line in lines:
        match = _STATEMENT.match(line)
        if match is None:
            continue
        name, value = match["name"], match["value"]
        if name == "$old_group":
            current = {"name": _unquote(value.strip())}
            groups.append(current)
        else:
            current[name] = _parse_list(value)
    return [_group(path, g) for g in groups]


def _group(path: Path, raw: dict) -> AthenaGroup:
    if "@x" not in raw or "@y" not in raw:
        raise UnsupportedFormatError(path, f"group {raw.get('name')!r} has no @x/@y arrays")
    args = raw.get("@args", [])
    pairs = {k: v for k, v in zip(args[::2], args[1::2], strict=False) if isinstance(k, str)}
    params = {k: float(v) for k, v in pairs.items() if k.startswith("bkg_") and _is_number(v)}
    energy = np.asarray(raw["@x"], dtype=np.float64)
    mu = np.asarray(raw["@y"], dtype=np.float64)
    return AthenaGroup(raw["name"], str(pairs.get("label", raw["name"])), energy, mu, params)


def _parse_list(text: str) -> list:
    """A Perl list literal ``( 'a', 1, [ ... ] )`` as nested Python lists of str."""
    body = text.strip()
    if body.startswith("(") and body.endswith(")"):
        body = body[1:-1]
    stack: list[list] = [[]]
    for token in _TOKEN.findall(body):
        if token == "[":
            stack.append([])
        elif token == "]" and len(stack) > 1:
            inner = stack.pop()
            stack[-1].append(inner)
        elif token not in {",", "=>", "]"}:
            stack[-1].append(_unquote(token))
    return stack[0]


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == "'":
        # Perl single quotes escape only the quote and the backslash.
        return token[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return token


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def read_xdi(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns and header fields of an XDI file.

    Returns
    -------
    columns : dict of str to ndarray of shape (N,)
        Named by the ``# Column.k: name [unit]`` headers (the name only).
    header : dict of str to str
        Every ``# Key.sub: value`` header line.

    Raises
    ------
    InputNotFoundError, UnsupportedFormatError
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(path, "no such XDI file")
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not text or not text[0].startswith("# XDI"):
        raise UnsupportedFormatError(path, f"first line {text[:1]!r} is not an XDI version line")
    header = dict(
        (key.strip(), value.strip())
        for line in text
        if line.startswith("#") and ":" in line and "." in line.split(":", 1)[0]
        for key, value in [line[1:].split(":", 1)]
    )
    names = [header[f"Column.{k}"].split()[0] for k in range(1, 100) if f"Column.{k}" in header]
    data = np.loadtxt(path, comments="#", ndmin=2)
    if data.shape[1] < len(names) or not names:
        raise UnsupportedFormatError(path, f"{data.shape[1]} data columns but {len(names)} column headers")
    return {name: data[:, k] for k, name in enumerate(names)}, header
