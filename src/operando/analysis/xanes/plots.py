"""PNG figures of the XANES pipeline, after the first paper's figures of detection, motion and edge maps.

Every ``plot_*`` function takes small in-memory arrays (a reference image, tracks
of shape (P, F, 2), ROI maps of shape (P, S, h, w)) and an output path, and
returns the written Path. Figures are built on :class:`matplotlib.figure.Figure`
with the Agg canvas, never through pyplot's global state, so that they are safe
in threads and leave no open figures behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage import measure

__all__ = [
    "plot_all",
    "plot_differentials",
    "plot_displacement",
    "plot_edge_maps",
    "plot_overlay",
    "plot_velocity",
]

DPI = 120


def plot_overlay(reference: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    """Reference image (Y, X) with each particle's contour and id (labels: 0 background, p + 1 particle p)."""
    return _save(_overlay_figure(reference, labels), path)


def plot_displacement(positions: np.ndarray, path: str | Path) -> Path:
    """Cumulative displacement |r(f) − r(0)| (px) of each particle against frame; positions (P, F, 2)."""
    return _save(_displacement_figure(positions), path)


def plot_velocity(positions: np.ndarray, path: str | Path) -> Path:
    """Velocity components v_y, v_x (px / frame) of each particle against frame; positions (P, F, 2)."""
    return _save(_velocity_figure(positions), path)


def plot_edge_maps(edge: np.ndarray, path: str | Path, *, masks: np.ndarray | None = None) -> Path:
    """Grid of edge-energy maps, particles × scans, one shared eV colour scale.

    ``edge`` is (P, S, h, w) in eV; ``masks`` (P, h, w) hides pixels outside each particle.
    """
    return _save(_edge_figure(edge, masks=masks), path)


def plot_differentials(differentials: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Grid of differential maps (last − first aligned frame), particles × methods; each (P, h, w)."""
    return _save(_differential_figure(differentials), path)


def plot_all(
    result: xr.Dataset,
    reference: np.ndarray,
    labels: np.ndarray,
    differentials: Mapping[str, np.ndarray],
    out_dir: str | Path,
) -> list[Path]:
    """Write every figure of a pipeline result (``result.zarr``'s Dataset) into ``out_dir``.

    Returns
    -------
    list of Path
        ``overlay.png``, ``displacement.png``, ``velocity.png``, ``edge_maps.png``, ``differential.png``.
    """
    out = Path(out_dir)
    positions = result["position_px"].values
    return [
        plot_overlay(reference, labels, out / "overlay.png"),
        plot_displacement(positions, out / "displacement.png"),
        plot_velocity(positions, out / "velocity.png"),
        plot_edge_maps(result["edge_energy_ev"].values, out / "edge_maps.png", masks=result["mask"].values),
        plot_differentials(differentials, out / "differential.png"),
    ]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _figure(*, size: tuple[float, float] = (6.4, 4.2)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _overlay_figure(reference: np.ndarray, labels: np.ndarray) -> Figure:
    fig = _figure(size=(6.0, 6.0))
    ax = fig.add_subplot()
    ax.imshow(reference, cmap="gray")
    for p in range(1, int(labels.max()) + 1):
        for contour in measure.find_contours((labels == p).astype(float), 0.5):
            ax.plot(contour[:, 1], contour[:, 0], color="tab:orange", lw=1.2)
        y, x = np.argwhere(labels == p).mean(axis=0)
        ax.text(x, y, str(p - 1), color="yellow", ha="center", va="center", fontsize="small", weight="bold")
    ax.set(xlabel="x (px)", ylabel="y (px)", title=f"{int(labels.max())} particles detected")
    return fig


def _displacement_figure(positions: np.ndarray) -> Figure:
    distance = np.hypot(*np.moveaxis(positions - positions[:, :1], -1, 0))
    fig = _figure()
    ax = fig.add_subplot()
    for p, curve in enumerate(distance):
        ax.plot(curve, lw=1, label=f"particle {p}")
    ax.set(xlabel="frame (scan-major)", ylabel="cumulative displacement (px)", title="Particle displacement")
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def _velocity_figure(positions: np.ndarray) -> Figure:
    velocity = np.gradient(positions, axis=1) if positions.shape[1] > 1 else np.zeros_like(positions)
    fig = _figure(size=(6.4, 5.6))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, axis, name in zip(axes, (0, 1), ("v_y", "v_x"), strict=True):
        for p, curve in enumerate(velocity[..., axis]):
            ax.plot(curve, lw=0.8, label=f"particle {p}")
        ax.set_ylabel(f"{name} (px / frame)")
    axes[0].set_title("Particle velocity")
    axes[-1].set_xlabel("frame (scan-major)")
    axes[0].legend(fontsize="x-small", ncol=3)
    return fig


def _edge_figure(edge: np.ndarray, *, masks: np.ndarray | None = None) -> Figure:
    if masks is not None:
        edge = np.where(masks[:, None], edge, np.nan)
    n_p, n_s = edge.shape[:2]
    finite = edge[np.isfinite(edge)]
    # Shared scale over particles and scans so colours compare; percentiles ignore stray pixels.
    vmin, vmax = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    fig = _figure(size=(1.8 * n_s + 1.4, 1.6 * n_p + 0.6))
    axes = fig.subplots(n_p, n_s, squeeze=False)
    for p in range(n_p):
        for s in range(n_s):
            ax = axes[p, s]
            image = ax.imshow(edge[p, s], cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if p == 0:
                ax.set_title(f"scan {s}", fontsize="small")
            if s == 0:
                ax.set_ylabel(f"particle {p}", fontsize="small")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="edge energy E½ (eV)", shrink=0.8)
    return fig


def _differential_figure(differentials: Mapping[str, np.ndarray]) -> Figure:
    methods = list(differentials)
    n_p = len(next(iter(differentials.values())))
    fig = _figure(size=(1.8 * len(methods) + 1.4, 1.6 * n_p + 0.6))
    axes = fig.subplots(n_p, len(methods), squeeze=False)
    for m, name in enumerate(methods):
        maps = np.asarray(differentials[name], dtype=np.float64)
        limit = float(np.nanmax(np.abs(maps))) if np.any(np.isfinite(maps)) else 1.0
        for p in range(n_p):
            ax = axes[p, m]
            image = ax.imshow(maps[p], cmap="RdBu_r", vmin=-(limit or 1.0), vmax=limit or 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if p == 0:
                ax.set_title(name, fontsize="small")
            if m == 0:
                ax.set_ylabel(f"particle {p}", fontsize="small")
        fig.colorbar(image, ax=axes[:, m].tolist(), label="Δ absorbance", shrink=0.6)
    return fig
