"""Resume: a manifest of the output chunks that are written and verified.

A chunk's presence on disk is no proof that it was finished (with
``write_empty_chunks=False`` a missing chunk reads as fill, and a killed writer
can leave a stale file), so every finished unit (a chunk, or a shard when the
array is sharded) gets its own small JSON file in a sidecar directory::

    out.zarr/.operando-manifest/<array path>/<i>.<j>.<k>.json

written *after* the unit's write succeeded, through a temporary file and an
atomic rename: many workers can record at once without a lock and a reader
never sees half an entry. Each entry holds the unit index and the CRC-32 of the
unit's encoded bytes on disk in every output the unit writes (``null`` when no
file was written because the unit is all fill), so a re-run can verify the
bytes cheaply and skip the unit. The manifest lives under the first output.

A ``plan.json`` beside the entries records the geometry and the caller's
``run_key``; a manifest from another plan is discarded rather than trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zarr

__all__ = ["MANIFEST_DIR", "Manifest"]

MANIFEST_DIR = ".operando-manifest"


@dataclass(frozen=True)
class Manifest:
    """The manifest of a run's output arrays; picklable, so tasks record their own units.

    Attributes
    ----------
    directory : Path
        Where the entries are, ``<store>/.operando-manifest/<first array's path>``.
    array_dirs : tuple of Path
        Each output array's directory (a unit's keys are relative to them).
    """

    directory: Path
    array_dirs: tuple[Path, ...]

    @classmethod
    def for_arrays(cls, outs: Sequence[zarr.Array]) -> Manifest:
        """The manifest of ``outs``, which must live in local (directory) stores."""
        dirs = tuple(_array_dir(out) for out in outs)
        store, path = _store_root(outs[0]), outs[0].store_path.path
        return cls(store / MANIFEST_DIR / (path or "_root").replace("/", "__"), dirs)

    def start(self, plan: dict) -> None:
        """Keep the entries if they were made under the same ``plan``, else start afresh."""
        plan_file = self.directory / "plan.json"
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(plan_file, json.dumps(plan, sort_keys=True))

    def checksums(self, keys: Sequence[str]) -> list[int | None]:
        """CRC-32 of the stored bytes of one unit, key per output (e.g. ``"c/0/1"``); None when absent."""
        return [_crc(d / key) for d, key in zip(self.array_dirs, keys, strict=True)]

    def verified(self, index: tuple[int, ...], keys: Sequence[str]) -> bool:
        """True when ``index`` is recorded and its bytes on disk still match the record."""
        try:
            entry = json.loads(self._entry(index).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return tuple(entry["index"]) == tuple(index) and entry["crc32"] == self.checksums(keys)

    def record(self, index: tuple[int, ...], keys: Sequence[str]) -> int:
        """Record unit ``index`` as finished (call after its writes returned); its stored size."""
        crcs = self.checksums(keys)
        paths = [d / key for d, key, c in zip(self.array_dirs, keys, crcs, strict=True) if c is not None]
        _write_atomic(self._entry(index), json.dumps({"index": list(index), "crc32": crcs}))
        return sum(p.stat().st_size for p in paths)

    def entries(self) -> list[tuple[int, ...]]:
        """Recorded unit indices (unverified), sorted."""
        return sorted(
            tuple(int(i) for i in p.name[: -len(".json")].split("."))
            for p in self.directory.glob("*.json")
            if p.name != "plan.json"
        )

    def clear(self) -> None:
        """Remove the manifest (after the output was marked complete, it is no longer needed)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _entry(self, index: tuple[int, ...]) -> Path:
        return self.directory / (".".join(map(str, index)) + ".json")


def _store_root(out: zarr.Array) -> Path:
    root = getattr(out.store_path.store, "root", None)
    if root is None:
        raise TypeError(
            f"resumable writes need a local zarr store, not {type(out.store_path.store).__name__}"
        )
    return Path(root).resolve()


def _array_dir(out: zarr.Array) -> Path:
    return _store_root(out) / out.store_path.path


def _crc(path: Path) -> int | None:
    try:
        return zlib.crc32(path.read_bytes())
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    # A unique temporary name per writer: two retries of one task may race.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
