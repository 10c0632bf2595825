"""PNG figures of the CT cell statistics, after the paper's Fig. 3–5 and Supplementary Fig. 7–10.

Every ``plot_*`` function takes the statistics Dataset (the schema
of ``cell_statistics``) or a Faraday comparison
(:func:`operando.analysis.ct.faraday.compare_with_ct`) and an output path, and
returns the written Path. Figures are built on :class:`matplotlib.figure.Figure`
with the Agg canvas, never through pyplot's global state, so that they are safe
in threads and leave no open figures behind. Only the small arrays a figure shows
are computed (curves over time, a few 2D maps), never a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_all",
    "plot_edge_displacement",
    "plot_faraday",
    "plot_maps",
    "plot_side_thickness",
    "plot_volumes",
]

DPI = 120
BACKGROUND = "background"


def plot_volumes(
    ds: xr.Dataset, path: str | Path, *, log: bool = False, adjusted: xr.Dataset | None = None
) -> Path:
    """Volume (µm³) against time, one line per class but the background; ``log`` for a log axis.

    ``adjusted`` (:func:`~operando.analysis.ct.adjusted.adjusted_volumes`) adds its
    estimates as open markers with ±1 standard error bars.
    """
    return _save(_volumes_figure(ds, log=log, adjusted=adjusted), path)


def plot_side_thickness(ds: xr.Dataset, path: str | Path) -> Path:
    """Thickness of each side (electrode plus its Li layers, µm) against time (paper's Fig. 3c)."""
    return _save(_side_thickness_figure(ds), path)


def plot_maps(
    ds: xr.Dataset,
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    times: Sequence[float] | None = None,
) -> Path:
    """Grid of flattened thickness maps (µm): rows are ``classes``, columns ``times`` (minutes).

    Each row shares one colour scale and colourbar. Defaults: every class but the
    background, and the first, middle and last times (pristine, half and full cycle in the paper).
    """
    return _save(_maps_figure(ds, classes=classes, times=times), path)


def plot_edge_displacement(ds: xr.Dataset, path: str | Path, *, maps: bool = False) -> Path:
    """Mean edge displacement per side and the gap (µm) against time; ``maps`` adds the final displacement maps."""
    return _save(_edge_figure(ds, maps=maps), path)


def plot_faraday(comparison: xr.Dataset, path: str | Path) -> Path:
    """CT-measured and Faraday Li volumes (µm³) against time, and their ratio (paper's Fig. 3d)."""
    return _save(_faraday_figure(comparison), path)


def plot_all(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    faraday: xr.Dataset | None = None,
    adjusted: xr.Dataset | None = None,
) -> list[Path]:
    """Write every figure into ``out_dir`` (created).

    ``faraday`` is a :func:`compare_with_ct` result, ``adjusted`` an
    :func:`~operando.analysis.ct.adjusted.adjusted_volumes` one.

    Returns
    -------
    list of Path
        The PNG files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_volumes(ds, out / "volumes.png", log=True, adjusted=adjusted),
        plot_side_thickness(ds, out / "side_thickness.png"),
        plot_maps(ds, out / "thickness_maps.png"),
        plot_edge_displacement(ds, out / "edge_displacement.png", maps=True),
    ]
    if faraday is not None:
        paths.append(plot_faraday(faraday, out / "faraday.png"))
    return paths


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _figure(*, size: tuple[float, float] = (6.4, 4.2)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _times(ds: xr.Dataset) -> np.ndarray:
    return np.asarray(ds["time"].values, dtype=np.float64)


def _volumes_figure(ds: xr.Dataset, *, log: bool = False, adjusted: xr.Dataset | None = None) -> Figure:
    volumes = ds["volume_um3"].compute()
    fig = _figure()
    ax = fig.add_subplot()
    for name in volumes["class"].values:
        if str(name) != BACKGROUND:
            (line,) = ax.plot(
                _times(ds), volumes.sel({"class": name}).values, marker="o", ms=3, label=str(name)
            )
            if adjusted is not None:
                _adjusted_points(ax, adjusted, str(name), line.get_color())
    if log:
        ax.set_yscale("log")
    title = "Volume per class" + (
        "\n(□ error-adjusted by the reference slices, ±1 SE)" if adjusted is not None else ""
    )
    ax.set(xlabel="time (min)", ylabel="volume (µm³)", title=title)
    ax.legend(fontsize="small")
    return fig


def _adjusted_points(ax: Any, adjusted: xr.Dataset, name: str, color: str) -> None:
    """Error-adjusted volumes of one class: open markers, ±1 standard error."""
    ax.errorbar(
        _times(adjusted),
        adjusted["adjusted_volume_um3"].sel({"class": name}).values,
        yerr=adjusted["adjusted_volume_se_um3"].sel({"class": name}).values,
        fmt="s",
        ms=5,
        mfc="none",
        color=color,
        capsize=2,
    )


def _side_thickness_figure(ds: xr.Dataset) -> Figure:
    thickness = ds["side_thickness_um"].compute()
    fig = _figure()
    ax = fig.add_subplot()
    for side in thickness["side"].values:
        ax.plot(_times(ds), thickness.sel(side=side).values, marker="o", ms=3, label=f"{side} side")
    ax.set(xlabel="time (min)", ylabel="thickness (µm)", title="Thickness per side")
    ax.legend()
    return fig


def _default_times(ds: xr.Dataset, n: int = 3) -> list[float]:
    times = _times(ds)
    picks = np.unique(np.linspace(0, times.size - 1, min(n, times.size)).round().astype(int))
    return [float(times[i]) for i in picks]


def _extent_um(ds: xr.Dataset) -> tuple[float, float, float, float]:
    # Pixel edges, not centres, so that the axes span the full field of view in µm.
    x, y = (np.asarray(ds[d].values, dtype=np.float64) for d in ("x", "y"))
    dx = x[1] - x[0] if x.size > 1 else float(ds.attrs.get("voxel_size_um", 1.0))
    dy = y[1] - y[0] if y.size > 1 else float(ds.attrs.get("voxel_size_um", 1.0))
    return x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2


def _maps_figure(
    ds: xr.Dataset, *, classes: Sequence[str] | None = None, times: Sequence[float] | None = None
) -> Figure:
    classes = (
        [str(c) for c in ds["class"].values if str(c) != BACKGROUND] if classes is None else list(classes)
    )
    times = _default_times(ds) if times is None else list(times)
    maps = ds["thickness_map_um"].sel({"class": classes}).sel(time=times, method="nearest").compute()
    extent = _extent_um(ds)
    fig = _figure(size=(2.6 * len(times) + 1.2, 2.2 * len(classes) + 0.4))
    axes = fig.subplots(len(classes), len(times), squeeze=False, sharex=True, sharey=True)
    for r, name in enumerate(classes):
        row = maps.sel({"class": name}).values
        vmax = float(np.nanmax(row)) if np.any(np.isfinite(row)) else 1.0
        for c, t in enumerate(maps["time"].values):
            ax = axes[r, c]
            image = ax.imshow(row[c], extent=extent, vmin=0.0, vmax=vmax or 1.0, cmap="viridis")
            ax.set_title(f"{name}, {t:g} min", fontsize="small")
            if r == len(classes) - 1:
                ax.set_xlabel("x (µm)")
            if c == 0:
                ax.set_ylabel("y (µm)")
        fig.colorbar(image, ax=axes[r, :].tolist(), label="thickness (µm)", shrink=0.9)
    fig.suptitle("Flattened thickness maps")
    return fig


def _edge_figure(ds: xr.Dataset, *, maps: bool = False) -> Figure:
    displacement = ds["edge_displacement_um"].compute()
    sides = [str(s) for s in displacement["side"].values]
    fig = _figure(size=(6.4 + 3.2 * len(sides) * maps, 4.2))
    axes = fig.subplots(1, 1 + len(sides) * maps, squeeze=False)[0]
    ax = axes[0]
    for side in sides:
        ax.plot(_times(ds), displacement.sel(side=side).values, marker="o", ms=3, label=f"{side} edge")
    ax.set(xlabel="time (min)", ylabel="mean edge displacement (µm)", title="Electrode edges")
    # The gap is an absolute distance, far larger than the displacements: its own axis.
    gap_ax = ax.twinx()
    gap_ax.plot(_times(ds), ds["gap_um"].values, "k--", marker="s", ms=3, label="gap")
    gap_ax.set_ylabel("gap (µm)")
    lines = ax.get_lines() + gap_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
    if maps:
        _edge_maps(fig, axes[1:], ds, sides)
    return fig


def _edge_maps(fig: Figure, axes: Sequence, ds: xr.Dataset, sides: Sequence[str]) -> None:
    # Last timestep relative to the first: where each electrode surface moved, signed.
    edge = ds["edge_um"].isel(time=[0, -1]).compute()
    change = (edge.isel(time=1) - edge.isel(time=0)).values
    limit = float(np.nanmax(np.abs(change))) or 1.0
    for ax, side, values in zip(axes, sides, change, strict=True):
        image = ax.imshow(values, extent=_extent_um(ds), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set(xlabel="x (µm)", ylabel="y (µm)", title=f"{side} edge, last − first")
        fig.colorbar(image, ax=ax, label="displacement (µm)", shrink=0.8)


def _faraday_figure(comparison: xr.Dataset) -> Figure:
    cmp = comparison.compute()
    times = np.asarray(cmp["time"].values, dtype=np.float64)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(times, cmp["faraday_volume_um3"].values, marker="o", ms=3, label="Faraday (cycling curve)")
    ax.plot(times, cmp["measured_volume_um3"].values, marker="s", ms=3, label="measured (CT)")
    ax.set(xlabel="time (min)", ylabel="Li volume (µm³)", title="Traveling Li: CT vs Faraday's law")
    ratio_ax = ax.twinx()
    ratio_ax.plot(times, cmp["ratio"].values, "k:", label="measured / Faraday")
    ratio_ax.set_ylabel("measured / Faraday")
    lines = ax.get_lines() + ratio_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
    return fig
