"""Find the pipeline runs in an output folder, and fingerprint their files without reading data.

A CT run is a folder whose ``stats/stats.csv`` exists (``operando ct run``), or a
``stats`` folder itself (``operando ct stats``); a XANES run is a folder holding
``tracks.csv`` (``operando xanes run``). zarr stores are never walked into: their
chunk files can number millions, and only their ``zarr.json`` metadata is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from operando.errors import ConfigError

__all__ = [
    "Run",
    "find_runs",
    "read_timings",
    "sha256_file",
    "zarr_attributes",
    "zarr_metadata_files",
    "zarr_metadata_sha256",
]

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Run:
    """One pipeline run inside the report's folder.

    Attributes
    ----------
    kind : {"ct", "xanes"}
    root : Path
        The run's folder (``registered.zarr`` etc. for CT, ``tracks.csv`` for XANES).
    name : str
        ``root`` relative to the report's folder (``"."`` for the folder itself).
    """

    kind: str
    root: Path
    name: str

    @property
    def anchor(self) -> str:
        """An HTML id unique in the page."""
        slug = "".join(c if c.isalnum() else "-" for c in self.name).strip("-") or "top"
        return f"{self.kind}-{slug}"

    @property
    def stats_dir(self) -> Path:
        """CT: the folder of ``stats.csv`` and the plots."""
        return self.root / "stats" if (self.root / "stats" / "stats.csv").is_file() else self.root


def find_runs(out_dir: str | Path, *, max_depth: int = 3) -> list[Run]:
    """Every CT and XANES run at most ``max_depth`` folders below ``out_dir``, in path order."""
    out = Path(out_dir)
    runs = []
    for folder in _folders(out, max_depth):
        name = folder.relative_to(out).as_posix()
        if (folder / "tracks.csv").is_file():
            runs.append(Run("xanes", folder, name))
        if (folder / "stats" / "stats.csv").is_file():
            runs.append(Run("ct", folder, name))
        elif (folder / "stats.csv").is_file() and not (folder.name == "stats" and folder != out):
            runs.append(Run("ct", folder, name))  # a bare `operando ct stats` output
    return runs


def _folders(root: Path, depth: int) -> Iterator[Path]:
    """``root`` and its sub-folders down to ``depth`` levels, skipping zarr stores and hidden ones."""
    yield root
    if depth == 0:
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and not is_zarr(child):
            yield from _folders(child, depth - 1)


def is_zarr(path: Path) -> bool:
    """A zarr v3 store (its root ``zarr.json`` exists)."""
    return (path / "zarr.json").is_file()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def zarr_metadata_files(store: str | Path) -> list[Path]:
    """Every ``zarr.json`` of a store: the root, and the nodes below each group (never chunks)."""
    store = Path(store)
    files = [store / "zarr.json"]
    node = json.loads(files[0].read_text())
    if node.get("node_type") == "group":
        for child in sorted(store.iterdir()):
            if child.is_dir() and is_zarr(child):
                files += zarr_metadata_files(child)
    return files


def zarr_metadata_sha256(store: str | Path) -> tuple[str, int]:
    """SHA-256 over a store's metadata (relative path and bytes of each ``zarr.json``), and their count.

    A fingerprint of the layout, attributes and coordinates' description: it
    changes when anything but chunk bytes changes, and costs no data read.
    """
    store = Path(store)
    digest = hashlib.sha256()
    files = zarr_metadata_files(store)
    for f in files:
        digest.update(f.relative_to(store).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest(), len(files)


def zarr_attributes(store: str | Path) -> dict[str, object]:
    """The root attributes of a zarr v3 store, from its ``zarr.json`` alone."""
    return dict(json.loads((Path(store) / "zarr.json").read_text()).get("attributes", {}))


def read_timings(folder: str | Path) -> dict[str, float] | None:
    """``timings.json`` of ``folder`` (``{"step": seconds}``), or None when there is none.

    Raises
    ------
    ConfigError
        The file is not a JSON object of numbers.
    """
    path = Path(folder) / "timings.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(path, f"is not a JSON object of step → seconds ({exc})") from None
