"""Sparse training labels from a phantom's truth: what a person labelling a few cross-sections would draw.

The second paper labelled a handful of cross-sections per labelled timestep and
trained on them; :func:`sparse_labels` writes the phantom's reference-frame truth
on every ``every``-th slice across ``axis`` (0 elsewhere = unlabelled), one TIFF
per timestep named ``labels_t{index}.tif`` so that ``operando train`` matches them
to timesteps by name. Registered data is in the reference frame, so these labels
fit it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from operando.errors import ConfigError
from operando.io.store import open_dataset, write_dataset

__all__ = ["sparse_labels", "truth_segmentation"]

_AXES = {"z": 1, "y": 2, "x": 3}


def sparse_labels(
    truth: str | Path,
    out_dir: str | Path,
    *,
    every: int = 8,
    first: int | None = None,
    times: Sequence[int] | None = None,
    axis: str = "x",
    group: str | None = None,
) -> list[Path]:
    """Write ``labels_t{t}.tif`` (uint8, truth class + 1 on the labelled slices, else 0).

    Parameters
    ----------
    truth : path
        A dataset holding ``labels`` (time, z, y, x), e.g. a phantom's truth.
    out_dir : path
        Folder for the TIFFs (created).
    every : int, keyword-only
        Label one slice in ``every`` across ``axis``.
    first : int, optional, keyword-only
        The first labelled slice, ``0 ≤ first < every`` (default ``every // 2``):
        another ``first`` gives other slices, e.g. reference slices for checking a
        model trained on the default ones (``operando ct stats --reference-labels``).
    times : sequence of int, optional, keyword-only
        Labelled timesteps (default: all).
    axis : {"z", "y", "x"}, keyword-only
    group : str, optional, keyword-only
        Sub-group holding ``labels`` (``"truth"`` inside a ``synth ct`` dataset).

    Returns
    -------
    list of Path
    """
    if axis not in _AXES or every < 1:
        raise ConfigError("--every/--axis", f"every={every}, axis={axis!r}: need every ≥ 1 and z, y or x")
    first = every // 2 if first is None else first
    if not 0 <= first < every:
        raise ConfigError(
            "--first", f"{first} is not in 0..{every - 1}", remedy="Pass 0 ≤ --first < --every."
        )
    labels = open_dataset(truth, group=group).labels
    times = range(labels.sizes["time"]) if times is None else times
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in times:
        picked = np.arange(first, labels.shape[_AXES[axis]], every)
        sparse = np.zeros(labels.shape[1:], np.uint8)
        index = [slice(None)] * 3
        index[_AXES[axis] - 1] = picked
        # only the labelled slices are read
        sparse[tuple(index)] = labels[t].isel({axis: picked}).values + 1
        paths.append(out / f"labels_t{t}.tif")
        tifffile.imwrite(paths[-1], sparse, photometric="minisblack", compression="zlib")
    return paths


def truth_segmentation(cell: str | Path, output: str | Path, *, attrs: dict | None = None) -> Path:
    """A ``synth ct`` phantom's reference-frame truth written as ``operando ct segment`` writes labels.

    The labels keep their CF class names; the dataset gets the cell's voxel size and
    normal axis (plus ``attrs``), is written chunk by chunk and marked complete: an
    exact segmentation to run the statistics on.
    """
    meta = open_dataset(cell).attrs
    ds = open_dataset(cell, group="truth")[["labels"]].drop_vars(["class", "axis"], errors="ignore")
    ds.attrs = {"voxel_size_um": meta["voxel_size_um"], "normal_axis": meta.get("normal_axis", "z")}
    ds.attrs.update(attrs or {})
    return write_dataset(ds, output)
