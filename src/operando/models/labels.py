"""Sparse training labels: label files matched to the image's timesteps, read slice by slice.

A label volume has the image's ``(z, y, x)`` shape, one per labelled timestep;
``0`` means *unlabelled* and ``1..K`` are the classes named by ``--classes``
(in that order). Two sources:

TIFF
    One multi-page TIFF per labelled timestep (pages = ``z`` slices), memory-mapped
    when uncompressed, else read page by page through tifffile's zarr view. Files map to ``time`` indices by an
    explicit list (``--labels-time 0,2,3``) or by ``*_t{index}.tif`` names.
zarr
    A variable with dims ``(time, z, y, x)`` (``--labels-var NAME``); timesteps
    with no labelled voxel are skipped.

Nothing here loads a whole volume: :meth:`SparseLabels.slice_counts` counts
labels per slice one ``z`` page (or zarr chunk slab) at a time.

Drafts written by ``operando predict`` (:mod:`operando.models.drafts`) hold the
model's class *indices* ``0..K-1``; as training labels they are ``predicted + 1``
(0 stays free for "unlabelled").
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import zarr

from operando.errors import ConfigError, InputNotFoundError, LabelsError, TrainingDataError

__all__ = ["AXES", "SparseLabels", "match_times", "open_label_tiffs", "open_label_zarr", "open_labels"]

#: Spatial axis names of a volume, in array order.
AXES = ("z", "y", "x")
_TIME_NAME = re.compile(r"_t(\d+)$")


def match_times(paths: Sequence[Path], *, times: Sequence[int] | None, n_times: int) -> dict[int, Path]:
    """``{time index: label file}`` from an explicit list or ``*_t{index}`` file names.

    Raises
    ------
    LabelsError
        If the count of times differs from the files, a name carries no index,
        an index is out of range or two files claim one timestep.
    """
    if times is not None and len(times) != len(paths):
        raise LabelsError("--labels-time", f"{len(times)} times for {len(paths)} label files")
    out: dict[int, Path] = {}
    for k, path in enumerate(paths):
        path = Path(path)
        if times is not None:
            t = int(times[k])
        else:
            m = _TIME_NAME.search(path.name.split(".")[0])
            if m is None:
                raise LabelsError(
                    path,
                    "the time index is missing: no --labels-time and the name does not end in _t{index}",
                    remedy="Name the file like labels_t3.tif or pass --labels-time with one index per file.",
                )
            t = int(m.group(1))
        if not 0 <= t < n_times:
            raise LabelsError(path, f"time index {t} is outside the image's {n_times} timesteps")
        if t in out:
            raise LabelsError(path, f"time index {t} is ambiguous: {out[t]} labels it too")
        out[t] = path
    return out


@dataclass
class _TiffVolume:
    """One TIFF label volume ``(z, y, x)``; the file handle is reopened after pickling."""

    path: Path
    _array: np.ndarray | zarr.Array | None = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}

    def _open(self) -> np.ndarray | zarr.Array:
        if self._array is None:
            try:
                self._array = tifffile.memmap(self.path, mode="r")
            except ValueError:  # compressed or tiled: tifffile's zarr view decodes one page at a time
                self._array = zarr.open_array(tifffile.imread(self.path, aszarr=True), mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._open().shape)

    def read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The labels in ``box`` (one slice per axis, unit step)."""
        vol = self._open()
        return np.asarray(vol[box] if vol.ndim == 3 else vol[box[1:]][None])


@dataclass
class SparseLabels:
    """Sparse labels of a ``(time, z, y, x)`` image: ``0`` unlabelled, ``1..K`` classes.

    Attributes
    ----------
    volumes : dict of int to object
        ``{time index: volume}`` where a volume has ``read(box) -> ndarray (z, y, x)``.
    shape : (Z, Y, X)
        The image's spatial shape.
    n_classes : int
        ``K``.
    sources : tuple of str
        File or variable names, for provenance.
    """

    volumes: dict[int, object]
    shape: tuple[int, int, int]
    n_classes: int
    sources: tuple[str, ...] = ()

    @property
    def times(self) -> tuple[int, ...]:
        return tuple(sorted(self.volumes))

    def read(self, t: int, box: tuple[slice, slice, slice]) -> np.ndarray:
        """uint8 labels of timestep ``t`` in ``box``, shape ``(z, y, x)`` of the box."""
        return np.asarray(self.volumes[t].read(box), dtype=np.uint8)

    def slabs(self, t: int, *, depth: int = 8) -> Iterator[tuple[int, np.ndarray]]:
        """``(z0, labels[z0:z0+depth])`` over the volume of timestep ``t``."""
        nz, ny, nx = self.shape
        for z0 in range(0, nz, depth):
            yield z0, self.read(t, (slice(z0, min(z0 + depth, nz)), slice(0, ny), slice(0, nx)))

    def slice_counts(self, axis: int) -> dict[tuple[int, int], np.ndarray]:
        """Voxels per label value ``0..K`` of every slice along ``axis`` with labels.

        Returns
        -------
        dict of (int, int) to ndarray of shape (K + 1,)
            ``{(time index, slice index): counts}``, only slices holding a label > 0.

        Raises
        ------
        LabelsError
            If a value exceeds ``K``.
        """
        k1 = self.n_classes + 1
        out: dict[tuple[int, int], np.ndarray] = {}
        for t in self.times:
            counts = np.zeros((self.shape[axis], k1), np.int64)
            for z0, slab in self.slabs(t):
                if slab.size and int(slab.max()) >= k1:
                    raise LabelsError(
                        getattr(self.volumes[t], "path", None) or ", ".join(self.sources),
                        f"value {int(slab.max())} at time {t} exceeds the {self.n_classes} classes",
                    )
                for dz, page in enumerate(slab):
                    counts += _page_counts(page, axis, z0 + dz, counts.shape)
            for i in np.flatnonzero(counts[:, 1:].sum(axis=1)):
                out[t, int(i)] = counts[i]
        return out


def _page_counts(page: np.ndarray, axis: int, z: int, shape: tuple[int, int]) -> np.ndarray:
    """Counts ``(slices, K + 1)`` that one ``(y, x)`` page adds; one page of int64 at most."""
    k1 = shape[1]
    if axis == 0:
        out = np.zeros(shape, np.int64)
        out[z] = np.bincount(page.ravel(), minlength=k1)
        return out
    index = np.arange(page.shape[axis - 1]).reshape((-1, 1) if axis == 1 else (1, -1))
    return np.bincount((index * k1 + page).ravel(), minlength=shape[0] * k1).reshape(shape)


def open_label_tiffs(
    paths: Sequence[str | Path],
    *,
    image_shape: Sequence[int],
    n_classes: int,
    times: Sequence[int] | None = None,
) -> SparseLabels:
    """Label TIFFs, one per labelled timestep, checked against the ``(T, Z, Y, X)`` image.

    Raises
    ------
    InputNotFoundError
        If a file is missing.
    LabelsError
        If a file's shape differs from the image's ``(Z, Y, X)`` or times do not match.
    """
    n_times, *spatial = (int(n) for n in image_shape)
    matched = match_times([Path(p) for p in paths], times=times, n_times=n_times)
    volumes: dict[int, object] = {}
    for t, path in matched.items():
        if not path.is_file():
            raise InputNotFoundError(path, "no such label file")
        vol = _TiffVolume(path)
        shape = vol.shape if len(vol.shape) == 3 else (1, *vol.shape)
        if tuple(shape) != tuple(spatial):
            raise LabelsError(
                path, f"shape {tuple(shape)} differs from the image's (z, y, x) {tuple(spatial)}"
            )
        volumes[t] = vol
    return SparseLabels(volumes, tuple(spatial), n_classes, tuple(str(p) for p in matched.values()))


@dataclass
class _ZarrVolume:
    """One timestep of a zarr label variable ``(time, z, y, x)``."""

    array: zarr.Array
    t: int

    def read(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self.array[(self.t, *box)])


def open_label_zarr(
    path: str | Path, *, variable: str, image_shape: Sequence[int], n_classes: int
) -> SparseLabels:
    """Labels from the variable ``variable`` (dims ``(time, z, y, x)``) of the zarr store ``path``.

    Timesteps without a labelled voxel are left out (checked a chunk slab at a time).

    Raises
    ------
    InputNotFoundError, LabelsError, TrainingDataError
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(path, "no such label store")
    try:
        array = zarr.open_array(str(path / variable), mode="r")
    except (FileNotFoundError, zarr.errors.NodeTypeValidationError, KeyError) as err:
        raise LabelsError(f"{path}/{variable}", f"no label array there ({type(err).__name__})") from None
    if tuple(array.shape) != tuple(int(n) for n in image_shape):
        raise LabelsError(
            f"{path}/{variable}", f"shape {array.shape} differs from the image's {tuple(image_shape)}"
        )
    spatial = tuple(int(n) for n in image_shape[1:])
    full = SparseLabels(
        {t: _ZarrVolume(array, t) for t in range(array.shape[0])}, spatial, n_classes, (f"{path}/{variable}",)
    )
    labelled = {t for t in full.times if any(slab.any() for _, slab in full.slabs(t, depth=_slab(array)))}
    if not labelled:
        raise TrainingDataError(f"{path}/{variable}", "no voxel is labelled (all values are 0)")
    return SparseLabels({t: full.volumes[t] for t in sorted(labelled)}, spatial, n_classes, full.sources)


def _slab(array: zarr.Array) -> int:
    return max(1, int(array.chunks[1]))


def open_labels(
    paths: Sequence[str | Path],
    *,
    image_shape: Sequence[int],
    n_classes: int,
    variable: str | None = None,
    times: Sequence[int] | None = None,
) -> SparseLabels:
    """Label TIFFs (one per timestep), or with ``variable`` one zarr store: the two sources of the CLI.

    Raises
    ------
    ConfigError
        A folder among TIFFs (a zarr store without ``variable``), or several stores with it.
    InputNotFoundError, LabelsError, TrainingDataError
        As :func:`open_label_tiffs` / :func:`open_label_zarr`.
    """
    paths = [Path(p) for p in paths]
    if variable is None:
        stores = [p for p in paths if p.is_dir()]
        if stores:
            raise ConfigError(
                "--labels",
                f"{stores[0]} is a folder",
                remedy="Pass --labels-var NAME (--reference-labels-var for ct stats) for a zarr label store.",
            )
        return open_label_tiffs(paths, image_shape=image_shape, n_classes=n_classes, times=times)
    if len(paths) != 1:
        raise ConfigError("--labels", f"{len(paths)} stores given with --labels-var; pass one zarr store")
    return open_label_zarr(paths[0], variable=variable, image_shape=image_shape, n_classes=n_classes)
