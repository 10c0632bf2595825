"""The TXM-XANES pipeline of the first paper: detect, track, align and map particles, end to end.

:func:`run_xanes` reads one XANES dataset (``counts``/``flat``/``dark`` or
``absorbance``, dims (scan, energy, y, x)) lazily and writes into one folder::

    out/tracks.csv     particle, scan, energy_index, y, x, dy, dx, vy, vx, ay, ax
    out/edge.csv       particle, scan, edge_energy_ev, n_pixels
    out/result.zarr    masks, aligned ROI stacks, edge-energy and uncertainty maps, tracks
    out/*.png          overlay, displacement, velocity, edge maps, differential maps

Frames are visited in acquisition order (scan-major, F = S × E). With
``method="com"`` every particle is followed by its centre of mass
(:func:`~operando.analysis.xanes.track.track_particles`); a baseline method
registers each particle's ROI sequence (cut around its detected position, with
the detection margin covering its motion) to the first frame, and the particle's
position is its detected centroid plus that shift. Either way the ROIs are then
resampled onto the particle's position (:func:`~operando.analysis.xanes.align.align_rois`),
so methods differ only in the positions they give. With ``model=`` (the paper's deep
route) a DualUNet or CycleGAN outlines the particle in its fixed ROI in every frame
(:func:`~operando.analysis.xanes.deep.roi_masks`) and the position is the centre of
mass of that outline (moments M00, M10, M01); the result's ``mask`` is then the
model's outline of the reference image. The stack is read frame chunk
by frame chunk: once to track (or cut ROIs) and once to write the aligned ROIs,
from which the edge maps are computed in the same pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from operando.analysis.xanes import plots
from operando.analysis.xanes.align import align_rois, alignment_quality
from operando.analysis.xanes.baselines import METHODS, register_stack
from operando.analysis.xanes.deep import mask_model_header, model_positions, roi_masks
from operando.analysis.xanes.detect import (
    POST_EDGE_EV,
    Particles,
    detect_particles,
    edge_jump_image,
    reference_image,
)
from operando.analysis.xanes.spectra import edge_maps
from operando.analysis.xanes.track import track_particles
from operando.errors import ConfigError, DatasetLayoutError, EnergyListError
from operando.io.layout import XANES_DIMS
from operando.io.store import mark_complete, open_dataset, prepare_output, write_dataset
from operando.io.xanes import lazy_absorbance

__all__ = ["ALL_METHODS", "open_absorbance", "particle_positions", "run_xanes"]

ALL_METHODS: tuple[str, ...] = ("com", *METHODS)
_MAP_VARS = ("edge_energy_ev", "edge_uncertainty_ev")
_MOTION = ("dy", "dx", "vy", "vx", "ay", "ax")


def open_absorbance(path: str | Path) -> tuple[da.Array, np.ndarray]:
    """Lazy absorbance (S, E, Y, X) of a XANES dataset and its energies (E,) in eV.

    Raises
    ------
    DatasetLayoutError
        Neither ``absorbance`` nor ``counts``/``flat`` with dims (scan, energy, y, x).
    EnergyListError
        No ``energy`` coordinate.
    """
    ds = open_dataset(path)
    if "absorbance" in ds:
        var = ds["absorbance"]
    elif "counts" in ds and "flat" in ds:
        var = ds["counts"]
    else:
        raise DatasetLayoutError(path, f"holds neither 'absorbance' nor 'counts' + 'flat' (has {list(ds)})")
    if var.dims != XANES_DIMS:
        raise DatasetLayoutError(path, f"dims {var.dims} are not {XANES_DIMS}")
    if "energy" not in ds.coords:
        raise EnergyListError(path, "no 'energy' coordinate (eV) along the energy dimension")
    if "absorbance" in ds:
        return var.data, ds["energy"].values.astype(np.float64)
    dark = ds["dark"].data if "dark" in ds else None
    return lazy_absorbance(ds["counts"].data, ds["flat"].data, dark), ds["energy"].values.astype(np.float64)


def run_xanes(
    stack_path: str | Path,
    out_dir: str | Path,
    *,
    method: str = "com",
    min_size_px: int | None = None,
    scan_for_detection: int = 0,
    model: str | Path | None = None,
    overwrite: bool = False,
    client: Any | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Detect, track and align every particle, then map its Ni K-edge energy per scan.

    Parameters
    ----------
    stack_path : str or Path
        XANES dataset (zarr), e.g. from ``operando synth xanes`` or ``operando ingest xanes``.
    out_dir : str or Path
        Output folder (created).
    method : str, keyword-only
        ``"com"`` (centre-of-mass tracking) or a baseline of :data:`~operando.analysis.xanes.baselines.METHODS`.
    min_size_px : int, optional
        Smaller objects are debris (default: see :func:`detect_particles`).
    scan_for_detection : int
        Scan whose post-edge mean is the reference image.
    model : str or Path, optional
        Weights file of a particle-mask network (DualUNet or CycleGAN): positions
        are the centres of its masks instead of ``method``'s; recorded in the
        result's attributes ``model`` and ``model_header``.
    overwrite : bool
        Replace an existing ``result.zarr``.
    client : distributed.Client, optional
        Compute on its cluster; without one, dask's threaded scheduler.
    quiet : bool
        No progress bar.

    Returns
    -------
    dict
        Paths ``tracks``, ``edge``, ``result`` and ``figures`` (list), and
        ``particles`` (:class:`Particles`).

    Raises
    ------
    ConfigError, EnergyListError, EdgeCoverageError, NoParticlesError, ParticleSizeError
    ArchitectureError, WeightsFileError
        ``model`` is no particle-mask weights file.
    """
    _check_method(method)
    header = None if model is None else _check_model(model, method)
    absorbance, energies = open_absorbance(stack_path)
    _check_edge_coverage(energies)
    n_scans, n_energies = absorbance.shape[:2]
    if not 0 <= scan_for_detection < n_scans:
        raise ConfigError("scan_for_detection", f"scan {scan_for_detection} is not in 0..{n_scans - 1}")
    out = Path(out_dir)
    result = prepare_output(out / "result.zarr", overwrite=overwrite, inputs=(Path(stack_path),))
    reference, particles = _detect(absorbance, energies, scan_for_detection, min_size_px, client)
    frames = da.concatenate(list(absorbance), axis=0)  # scan-major; keeps the energy chunks
    size = _roi_size(particles)
    if model is None:
        positions = particle_positions(frames, particles, method=method)
    else:
        positions = model_positions(frames, particles, model, size=size, client=client)
    picked = _detection_frames(energies, scan_for_detection)
    centre = np.nanmean(positions[:, picked], axis=1)
    ds = _result(frames, positions, particles, centre, size, energies, n_scans)
    if model is not None:
        ds = _with_model(ds, reference, centre, size, model, header)
    write_dataset(ds, result, overwrite=overwrite, complete=False, client=client, quiet=quiet)
    mark_complete(result)
    stored = open_dataset(result)
    edge = _edge_table(stored)
    paths = {"tracks": out / "tracks.csv", "edge": out / "edge.csv", "result": result}
    _tracks_table(positions, n_energies).to_csv(paths["tracks"], index=False)
    edge.to_csv(paths["edge"], index=False)
    figures = _figures(stored, reference, particles, method, out)
    return {**paths, "figures": figures, "particles": particles}


def _check_method(method: str) -> None:
    if method not in ALL_METHODS:
        raise ConfigError(
            "method", f"unknown method {method!r}", remedy=f"Use one of {', '.join(ALL_METHODS)}."
        )


def _check_model(model: str | Path, method: str) -> dict[str, Any]:
    """The model's header fields; a model replaces the position method, so only "com" goes with it."""
    if method != "com":
        raise ConfigError(
            "model", f"a mask model gives the positions itself; it cannot go with method {method!r}"
        )
    return mask_model_header(model).fields()


def _check_edge_coverage(energies: np.ndarray) -> None:
    """Raise EdgeCoverageError now, not after tracking: one dummy spectrum through edge_maps."""
    probe = xr.DataArray(
        np.zeros((energies.size, 1, 1)), dims=("energy", "y", "x"), coords={"energy": energies}
    )
    edge_maps(probe)


def _detection_frames(energies: np.ndarray, scan: int) -> np.ndarray:
    """Frame indices (F = S × E order) averaged into the reference image: the scan's post-edge frames."""
    return scan * energies.size + np.flatnonzero(energies >= POST_EDGE_EV)


def _detect(
    absorbance: da.Array, energies: np.ndarray, scan: int, min_size_px: int | None, client: Any | None
) -> tuple[np.ndarray, Particles]:
    ref = reference_image(absorbance, energies, scan=scan)
    jump = edge_jump_image(absorbance, energies, scan=scan)
    ref, jump = dask.compute(ref, jump, scheduler=client)
    return ref, detect_particles(ref, edge_jump=jump, min_size_px=min_size_px)


def particle_positions(frames: da.Array | np.ndarray, particles: Particles, *, method: str) -> np.ndarray:
    """Position (y, x) of every particle in every frame by one method.

    Parameters
    ----------
    frames : dask.array.Array or ndarray of shape (F, Y, X)
        Absorbance frames; read chunk by chunk.
    particles : Particles
    method : str
        ``"com"`` or a baseline method.

    Returns
    -------
    ndarray of shape (P, F, 2)
        float64 raw-frame pixels; NaN where a particle was lost (com) or a frame
        not registered (baselines).
    """
    _check_method(method)
    if method == "com":
        return track_particles(frames, particles).position_px.values
    rois = _cut_rois(frames, particles.roi)
    shifts = np.stack([register_stack(r, method=method, reference=0) for r in rois])
    return particles.centroid[:, None, :] + shifts


def _with_model(
    ds: xr.Dataset,
    reference: np.ndarray,
    centre: np.ndarray,
    size: tuple[int, int],
    model: str | Path,
    header: dict[str, Any],
) -> xr.Dataset:
    """The model's outline of the reference image as ``mask``, and the model in the attributes."""
    cut = align_rois(reference[None].astype(np.float32), centre[:, None, :], size=size)
    mask = roi_masks(cut, model, largest_component=True)[:, 0].compute()
    attrs = {**ds.attrs, "model": str(Path(model).resolve()), "model_header": header}
    return ds.assign(mask=(("particle", "roi_y", "roi_x"), mask)).assign_attrs(attrs)


def _cut_rois(frames: da.Array | np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Each particle's fixed ROI (F, h, w) from every frame, all in one read of the stack."""
    cuts = [frames[:, y0:y1, x0:x1] for y0, x0, y1, x1 in boxes]
    if isinstance(frames, da.Array):
        cuts = list(dask.compute(*cuts))
    return [np.asarray(c, dtype=np.float64) for c in cuts]


def _roi_size(particles: Particles) -> tuple[int, int]:
    """One ROI shape for all particles: the largest detection ROI."""
    extent = particles.roi[:, 2:] - particles.roi[:, :2]
    return int(extent[:, 0].max()), int(extent[:, 1].max())


def _result(
    frames: da.Array,
    positions: np.ndarray,
    particles: Particles,
    centre: np.ndarray,
    size: tuple[int, int],
    energies: np.ndarray,
    n_scans: int,
) -> xr.Dataset:
    """The lazy result Dataset: aligned ROIs, their edge maps, masks and tracks."""
    n_p = len(positions)
    aligned = align_rois(frames, positions, size=size).reshape(n_p, n_scans, energies.size, *size)
    stack = xr.DataArray(aligned, dims=("particle", "scan", "energy", "y", "x"), coords={"energy": energies})
    maps = edge_maps(stack)[list(_MAP_VARS)].rename(y="roi_y", x="roi_x")
    masks = _masks(particles, centre, size)
    motion = _motion(positions)
    tracks = {
        "position_px": (("particle", "frame", "axis"), positions),
        **{f"{name}_px": (("particle", "frame", "axis"), v) for name, v in motion.items()},
    }
    return xr.Dataset(
        {
            "aligned": stack.rename(y="roi_y", x="roi_x").drop_vars("energy"),
            **maps.drop_vars("energy", errors="ignore").data_vars,
            "mask": (("particle", "roi_y", "roi_x"), masks),
            "centroid_px": (("particle", "axis"), particles.centroid),
            **tracks,
        },
        coords={
            "particle": np.arange(n_p),
            "scan": np.arange(n_scans),
            "energy": energies,
            # Integer codes with CF flags: zarr v3 has no stable string dtype.
            "axis": ("axis", [0, 1], {"flag_values": [0, 1], "flag_meanings": "y x"}),
            "frame_scan": ("frame", np.repeat(np.arange(n_scans), energies.size)),
            "frame_energy_index": ("frame", np.tile(np.arange(energies.size), n_scans)),
        },
        attrs={"roi_centre": "ROI pixel ((h - 1) / 2, (w - 1) / 2) is the particle's position"},
    )


def _masks(particles: Particles, centre: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each particle's detection mask (P, h, w) in its aligned ROI frame.

    The reference image averages the detection scan's post-edge frames, so the
    mask sits where the particle's mean position over those frames is: cutting
    the labels around that mean puts the mask on the aligned particle.
    """
    labels = particles.labels.astype(np.float32)[None]
    cut = align_rois(labels, centre[:, None, :], size=size, order=0).compute()[:, 0]
    return cut == np.arange(1, len(particles) + 1)[:, None, None]


def _motion(positions: np.ndarray) -> dict[str, np.ndarray]:
    """Displacement from the first frame, velocity and acceleration per frame (P, F, 2)."""
    n_f = positions.shape[1]
    velocity = np.gradient(positions, axis=1) if n_f > 1 else np.full_like(positions, np.nan)
    acceleration = np.gradient(velocity, axis=1) if n_f > 1 else np.full_like(positions, np.nan)
    return {"displacement": positions - positions[:, :1], "velocity": velocity, "acceleration": acceleration}


def _tracks_table(positions: np.ndarray, n_energies: int) -> pd.DataFrame:
    n_p, n_f = positions.shape[:2]
    motion = _motion(positions)
    columns = np.concatenate([positions, *motion.values()], axis=2).reshape(n_p * n_f, 8)
    table = pd.DataFrame(columns, columns=["y", "x", *_MOTION])
    frame = np.tile(np.arange(n_f), n_p)
    table.insert(0, "energy_index", frame % n_energies)
    table.insert(0, "scan", frame // n_energies)
    table.insert(0, "particle", np.repeat(np.arange(n_p), n_f))
    return table


def _edge_table(stored: xr.Dataset) -> pd.DataFrame:
    """Mean E½ over each particle's mask, per scan, over the pixels where E½ is finite."""
    edge = stored["edge_energy_ev"].values  # (P, S, h, w): small
    inside = stored["mask"].values[:, None] & np.isfinite(edge)
    n = inside.sum(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(inside, edge, 0.0).sum(axis=(2, 3)) / n
    n_p, n_s = n.shape
    return pd.DataFrame(
        {
            "particle": np.repeat(np.arange(n_p), n_s),
            "scan": np.tile(np.arange(n_s), n_p),
            "edge_energy_ev": mean.ravel(),
            "n_pixels": n.ravel(),
        }
    )


def _figures(
    stored: xr.Dataset, reference: np.ndarray, particles: Particles, method: str, out: Path
) -> list[Path]:
    aligned = stored["aligned"].data
    n_p, n_s, n_e = aligned.shape[:3]
    quality = alignment_quality(aligned.reshape(n_p, n_s * n_e, *aligned.shape[3:]))
    return plots.plot_all(stored, reference, particles.labels, {method: quality["differential"].values}, out)
