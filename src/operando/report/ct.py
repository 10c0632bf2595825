"""The report section of one CT run (``operando ct run`` / ``operando ct stats`` output)."""

from __future__ import annotations

from pathlib import Path

from operando.report.common import (
    csv_block,
    dataset_summary,
    figures,
    other_figures,
    provenance,
    zarr_stores,
)
from operando.report.html import note, section
from operando.report.runs import Run

__all__ = ["ct_section"]


def ct_section(run: Run, *, out_dir: Path) -> str:
    """Datasets, registration, class volumes and thickness, maps, electrodes, Faraday, provenance."""
    stats = run.stats_dir
    used: set[Path] = set()
    parts = [
        section(f"{run.anchor}-data", "Datasets", _datasets(run, out_dir), level=3),
        section(f"{run.anchor}-registration", "Registration", _registration(run), level=3),
        section(f"{run.anchor}-volumes", "Class volume and thickness", _volumes(stats, used), level=3),
        section(
            f"{run.anchor}-maps",
            "Flattened thickness maps",
            figures(stats, [(("thickness_maps*.png", "*maps*.png"), "Thickness maps")], used=used),
            level=3,
        ),
        section(f"{run.anchor}-electrodes", "Electrode displacement", _electrodes(stats, used), level=3),
        section(f"{run.anchor}-faraday", "Faraday comparison", _faraday(stats, used), level=3),
    ]
    rest = other_figures(stats, used=used)
    if rest:
        parts.append(section(f"{run.anchor}-other", "Other figures", rest, level=3))
    parts.append(provenance(run, out_dir=out_dir))
    return section(run.anchor, f"CT run: {run.name}", "".join(parts))


def _datasets(run: Run, out_dir: Path) -> str:
    stores = zarr_stores(run.root) + [s for s in zarr_stores(run.stats_dir) if run.stats_dir != run.root]
    if not stores:
        return note(f"no zarr dataset in {run.name}/")
    return "".join(dataset_summary(s, relative_to=out_dir) for s in stores)


def _registration(run: Run) -> str:
    found = sorted(run.root.glob("*.transforms.csv"))
    if not found:
        return note("no *.transforms.csv in the run folder: registration not shown")
    return "".join(csv_block(path, "Rigid transform per timestep") for path in found)


def _volumes(stats: Path, used: set[Path]) -> str:
    specs = [(("volumes*.png",), "Class volumes"), (("side_thickness*.png",), "Thickness per side")]
    tables = csv_block(stats / "stats.csv", "Volume (µm³) per class", pivot=("time", "class", "volume_um3"))
    tables += csv_block(
        stats / "stats.csv", "Mean thickness (µm) per class", pivot=("time", "class", "thickness_um")
    )
    if (stats / "adjusted.csv").is_file():  # only runs given --reference-labels
        for column, caption in (
            ("adjusted_volume_um3", "Error-adjusted volume (µm³) per class, from the reference slices"),
            ("adjusted_volume_se_um3", "Its standard error (µm³, delete-one-slice jackknife)"),
        ):
            tables += csv_block(stats / "adjusted.csv", caption, pivot=("time", "class", column))
    return figures(stats, specs, used=used) + tables


def _electrodes(stats: Path, used: set[Path]) -> str:
    body = figures(stats, [(("edge_displacement*.png",), "Electrode edge displacement")], used=used)
    body += csv_block(
        stats / "sides.csv", "Edge displacement (µm) per side", pivot=("time", "side", "edge_displacement_um")
    )
    if (stats / "colocalization.csv").is_file():
        body += csv_block(
            stats / "colocalization.csv", "Colocalization per pair", pivot=("time", "pair", "colocalization")
        )
    return body


def _faraday(stats: Path, used: set[Path]) -> str:
    if not (stats / "faraday.csv").is_file():
        return note("no faraday.csv: the run had no cell current (--current-density / --current-on)")
    body = figures(stats, [(("faraday*.png",), "Faraday vs CT")], used=used)
    return body + csv_block(stats / "faraday.csv", "Traveling Li: Faraday vs CT")
