"""The micro-CT pipeline of the second paper as three steps and their chain.

``register`` → ``segment`` → ``statistics``, each reading one operando dataset and
writing the next, out of core; :func:`run_ct` chains them into one output folder::

    out/registered.zarr             the series in the reference frame (+ transforms)
    out/registered.transforms.csv
    out/segmented.zarr              labels with CF class names
    out/stats/                      stats.csv, sides.csv, colocalization.csv,
                                    maps.zarr, faraday.csv, adjusted.csv,
                                    error_matrix.csv, PNG plots
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from operando.analysis.ct.adjusted import adjusted_volumes, write_adjusted
from operando.analysis.ct.faraday import compare_with_ct, ct_volume_change, traveling_li
from operando.analysis.ct.plots import plot_all
from operando.analysis.ct.register import write_transforms_csv
from operando.analysis.ct.resample import register_dataset
from operando.analysis.ct.stats import cell_statistics, column_chunks, roi_area_um2, write_stats
from operando.io.layout import label_classes
from operando.io.store import open_dataset
from operando.models.drafts import predict_drafts
from operando.models.labels import open_labels

__all__ = [
    "CellCurrent",
    "ReferenceSlices",
    "register",
    "run_ct",
    "segment",
    "statistics",
    "transforms_csv_path",
]


@dataclass(frozen=True)
class CellCurrent:
    """The electrochemistry of a run, for the Faraday comparison (paper, Supplementary Note 3).

    Attributes
    ----------
    current_density_ma_cm2 : float
    segments_min : ndarray of shape (S, 2)
        Current-on intervals (start, end) in minutes.
    area_cm2 : float, optional
        Electrode area; default the ROI's in-plane area (the Li the CT can see).
    measured_classes : tuple of str
        Split classes whose volume change is the CT-measured traveling Li.
    """

    current_density_ma_cm2: float
    segments_min: Sequence[Sequence[float]]
    area_cm2: float | None = None
    measured_classes: tuple[str, ...] = ("deposited_li", "dendrite")


@dataclass(frozen=True)
class ReferenceSlices:
    """Labelled reference slices for error-adjusted volumes (:mod:`operando.analysis.ct.adjusted`).

    Attributes
    ----------
    paths : tuple of Path
        One label TIFF per timestep, as for ``operando train``: ``0`` unlabelled,
        ``k`` the class ``k − 1``, on the registered volume; or one zarr store
        with ``variable``.
    times : tuple of int, optional
        Time index of each file (default: ``*_t{index}`` names).
    variable : str, optional
        Label variable (time, z, y, x) of a zarr store: read a chunk box at a
        time, where a compressed TIFF is decoded a page at a time (once per chunk
        column of the labels).
    axis : str
        Axis the slices cut across (the jackknife leaves one out at a time).
    """

    paths: tuple[Path, ...]
    times: tuple[int, ...] | None = None
    variable: str | None = None
    axis: str = "x"


def transforms_csv_path(registered: str | Path) -> Path:
    """``reg.zarr`` → ``reg.transforms.csv`` beside it."""
    registered = Path(registered)
    return registered.with_name(registered.name.removesuffix(".zarr") + ".transforms.csv")


def register(cell: str | Path, output: str | Path, **kwargs: Any) -> xr.Dataset:
    """Register every timestep to the reference; writes ``output`` and its transforms CSV.

    Keywords go to :func:`operando.analysis.ct.resample.register_dataset`.
    """
    transforms = register_dataset(cell, output, **kwargs)
    write_transforms_csv(transforms, transforms_csv_path(output))
    return transforms


def segment(registered: str | Path, model: str | Path, output: str | Path, **kwargs: Any) -> Path:
    """Labels of the registered series by a trained model (engine ``predict``), CF class names.

    Keywords go to :func:`operando.models.drafts.predict_drafts`; a 2D model trained
    with context gets its neighbouring slices along its training axis (from its
    header), and ``axis`` defaults to that axis.
    """
    return predict_drafts(registered, model, output, variable="intensity", **kwargs)


def statistics(
    segmented: str | Path,
    out_dir: str | Path,
    *,
    normal_axis: str | None = None,
    crop: str | None = None,
    plating_side: str = "auto",
    current: CellCurrent | None = None,
    reference: ReferenceSlices | None = None,
    overwrite: bool = False,
    client: Any | None = None,
) -> xr.Dataset:
    """Statistics, tables, maps and plots of a segmented series into ``out_dir``.

    ``reference`` adds the error-adjusted volumes of its timesteps
    (:func:`operando.analysis.ct.adjusted.adjusted_volumes`) to the tables and
    the volume plot.

    Returns
    -------
    xarray.Dataset
        :func:`operando.analysis.ct.stats.cell_statistics`'s result.
    """
    ds = open_dataset(segmented)
    normal_axis = normal_axis or ds.attrs.get("normal_axis")
    ds = open_dataset(segmented, chunks=column_chunks(ds["labels"], normal_axis=normal_axis))
    stats = cell_statistics(
        ds["labels"],
        normal_axis=normal_axis,
        crop=crop,
        plating_side=plating_side,
        voxel_size_um=ds.attrs.get("voxel_size_um"),
        client=client,
    )
    out = write_stats(stats, out_dir, overwrite=overwrite)
    comparison = None if current is None else _faraday(stats, current)
    if comparison is not None:
        comparison.to_dataframe().to_csv(out / "faraday.csv")
    adjusted = None if reference is None else _adjusted(ds["labels"], stats, reference, client)
    if adjusted is not None:
        write_adjusted(adjusted, out)
    plot_all(stats, out, faraday=comparison, adjusted=adjusted)
    return stats


def _adjusted(labels: xr.DataArray, stats: xr.Dataset, reference: ReferenceSlices, client: Any) -> xr.Dataset:
    slices = open_labels(
        reference.paths,
        image_shape=labels.shape,
        n_classes=len(label_classes(labels)),
        variable=reference.variable,
        times=reference.times,
    )
    return adjusted_volumes(labels, slices, stats, slice_axis=reference.axis, client=client)


def _faraday(stats: xr.Dataset, current: CellCurrent) -> xr.Dataset:
    area = {"area_cm2": current.area_cm2} if current.area_cm2 else {"area_um2": roi_area_um2(stats)}
    faraday = traveling_li(
        stats.time.values,
        current_density_ma_cm2=current.current_density_ma_cm2,
        segments_min=current.segments_min,
        **area,
    )
    return compare_with_ct(faraday, ct_volume_change(stats, current.measured_classes))


def run_ct(
    cell: str | Path,
    model: str | Path,
    out_dir: str | Path,
    *,
    reference: int = -1,
    axis: str | None = None,
    crop: str | None = None,
    plating_side: str = "auto",
    current: CellCurrent | None = None,
    reference_slices: ReferenceSlices | None = None,
    tta: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> dict[str, Path]:
    """register → segment → statistics of the CT series ``cell`` into ``out_dir``.

    Returns
    -------
    dict of str to Path
        ``registered``, ``transforms``, ``segmented`` and ``stats``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "registered": out / "registered.zarr",
        "transforms": transforms_csv_path(out / "registered.zarr"),
        "segmented": out / "segmented.zarr",
        "stats": out / "stats",
    }
    common = {"overwrite": overwrite, "client": client, "quiet": quiet}
    register(cell, paths["registered"], reference=reference, **common)
    segment(paths["registered"], model, paths["segmented"], axis=axis, tta=tta, device=device, **common)
    statistics(
        paths["segmented"],
        paths["stats"],
        crop=crop,
        plating_side=plating_side,
        current=current,
        reference=reference_slices,
        overwrite=overwrite,
        client=client,
    )
    return paths
