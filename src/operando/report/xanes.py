"""The report section of one XANES run (``operando xanes run`` output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from operando.report.common import (
    csv_block,
    dataset_summary,
    figures,
    other_figures,
    provenance,
    zarr_stores,
)
from operando.report.html import frame_table, note, section
from operando.report.runs import Run

__all__ = ["track_summary", "xanes_section"]

_METHOD_TABLES = ("methods.csv", "*method*.csv", "comparison*.csv")


def xanes_section(run: Run, *, out_dir: Path) -> str:
    """Datasets, particles, tracks, velocities, edge-energy maps, method comparison, provenance."""
    root = run.root
    used: set[Path] = set()
    particles = [(("*overlay*.png",), "Detected particles")]
    motion = [(("*displacement*.png",), "Cumulative displacement"), (("*velocit*.png",), "Velocities")]
    maps = [(("*edge*map*.png", "*edge_energy*.png"), "Edge-energy maps per scan")]
    parts = [
        section(f"{run.anchor}-data", "Datasets", _datasets(run, out_dir), level=3),
        section(f"{run.anchor}-particles", "Particles", figures(root, particles, used=used), level=3),
        section(
            f"{run.anchor}-tracks",
            "Tracks and velocities",
            figures(root, motion, used=used) + _tracks(root / "tracks.csv"),
            level=3,
        ),
        section(
            f"{run.anchor}-edge",
            "Edge energy",
            figures(root, maps, used=used)
            + csv_block(
                root / "edge.csv",
                "Mean edge energy (eV) per particle and scan",
                pivot=("particle", "scan", "edge_energy_ev"),
            ),
            level=3,
        ),
        section(f"{run.anchor}-methods", "Method comparison", _methods(root, used), level=3),
    ]
    rest = other_figures(root, used=used)
    if rest:
        parts.append(section(f"{run.anchor}-other", "Other figures", rest, level=3))
    parts.append(provenance(run, out_dir=out_dir))
    return section(run.anchor, f"XANES run: {run.name}", "".join(parts))


def _datasets(run: Run, out_dir: Path) -> str:
    stores = zarr_stores(run.root)
    if not stores:
        return note(f"no zarr dataset in {run.name}/")
    return "".join(dataset_summary(s, relative_to=out_dir) for s in stores)


def track_summary(tracks: pd.DataFrame) -> pd.DataFrame:
    """Per particle: frames, frames lost, final and largest displacement, largest speed (px, px/frame).

    Parameters
    ----------
    tracks : DataFrame
        ``tracks.csv``: one row per particle and frame with ``y, x, dy, dx, vy, vx``.

    Returns
    -------
    DataFrame indexed by ``particle``
    """
    moved = tracks.assign(
        lost=~np.isfinite(tracks["y"]) | ~np.isfinite(tracks["x"]),
        distance_px=np.hypot(tracks["dy"], tracks["dx"]),
        speed_px_per_frame=np.hypot(tracks["vy"], tracks["vx"]),
    )
    grouped = moved.groupby("particle")
    return pd.DataFrame(
        {
            "frames": grouped.size(),
            "lost": grouped["lost"].sum(),
            # last() skips NaN: the displacement at the last frame the particle was seen
            "final_displacement_px": grouped["distance_px"].last(),
            "max_displacement_px": grouped["distance_px"].max(),
            "max_speed_px_per_frame": grouped["speed_px_per_frame"].max(),
        }
    )


def _tracks(path: Path) -> str:
    if not path.is_file():
        return note("tracks.csv not found; track table not shown")
    summary = track_summary(pd.read_csv(path))
    return frame_table(summary, caption=f"Tracks per particle ({path.name}; pixels, frames)")


def _methods(root: Path, used: set[Path]) -> str:
    tables = sorted({p for pattern in _METHOD_TABLES for p in root.glob(pattern)})
    body = "".join(csv_block(p, "Tracking/alignment methods") for p in tables)
    if not tables:
        body = note("no methods.csv in the run folder: the method comparison table is omitted")
    return body + figures(root, [(("*differential*.png",), "Differential maps per method")], used=used)
