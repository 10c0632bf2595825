"""Synthetic full-field TXM-XANES stacks at the Ni K-edge, with ground truth.

Modelled on the synthetic set used to test per-particle registration of XANES
stacks of a deforming NCM cathode: isolated particles, a global rigid jitter of
every frame, independent non-rigid motion of each particle between frames, a
background that varies with energy and time, and noise.

Scene
    Irregular (star-shaped) particles with an ellipsoid-like thickness profile,
    one per cell of a grid so they never overlap nor touch the field edge, even
    when moved; a few small debris blobs in between, whose spectrum has no Ni
    edge. Each particle's Ni K-edge energy follows a pattern over the scans:
    ``uniform``, ``shrinking_core`` (an unreacted core shrinking inside a charged
    shell), ``offset_core`` (the same, off-centre) or ``inactive`` (never changes).
Spectra
    An analytic edge model (:func:`ni_k_edge`): arctangent step of width 1.2 eV
    centred on the edge energy E0, a white line 6 eV above it and a damped
    post-edge oscillation. E0 moves from 8346.4 eV (pristine NMC, half height)
    towards 8348.8 eV (charged, 4.3-4.8 V), as in measured NMC spectra.
Measurement
    absorbance = thickness × μ(E) + smooth background; flat = I0 × vignetting ×
    beam (fluctuating per frame); counts = Poisson(flat × exp(−absorbance) + dark),
    flat and dark recorded likewise. Poisson draws are keyed by global pixel
    index (:mod:`operando.synth._rng`), so no value depends on the chunking.
Motion
    Frame (scan s, energy e) shows object n at ``reference centre + jitter[s, e]
    + walk[s, e, n]``; the walk is a smoothed random walk per particle (zero for
    debris). Objects are rendered analytically at their sub-pixel positions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from operando.io.chunking import choose_chunks
from operando.io.layout import XANES_DIMS, label_attrs, xanes_dataset
from operando.io.store import write_with_truth
from operando.synth import _rng
from operando.synth._shapes import FourierField, blob_outline, random_field

__all__ = [
    "E0_CHARGED",
    "E0_PRISTINE",
    "PATTERNS",
    "Scene",
    "default_energies",
    "edge_energy_block",
    "frame_absorbance",
    "labels_block",
    "make_xanes",
    "ni_k_edge",
    "synth_xanes",
    "xanes_scene",
]

E0_PRISTINE = 8346.4  # eV, half-height edge of pristine NMC
E0_CHARGED = 8348.8  # eV, charged NMC (4.3-4.8 V)
PATTERNS = ("uniform", "shrinking_core", "offset_core", "inactive", "debris")
UNIFORM, SHRINKING, OFFSET, INACTIVE, DEBRIS = range(5)

_MU_PRE, _MU_EDGE, _MU_DEBRIS = 0.15, 0.85, 0.6  # 1/µm: below-edge, edge jump, debris
_STREAMS = {"counts": 10, "flat": 11, "dark": 12, "dark_pattern": 13}


def ni_k_edge(energy: np.ndarray, e0: np.ndarray) -> np.ndarray:
    """Normalized Ni K-edge absorption (0 far below the edge, about 1 far above).

    Parameters
    ----------
    energy, e0 : array-like, broadcastable
        Beam energy and edge energy (arctangent centre) in eV.

    Returns
    -------
    ndarray
        Arctangent step (width 1.2 eV), a white line (height 0.5, 2.5 eV wide,
        6 eV above e0) and a damped post-edge oscillation. The half height of
        the step lies within 0.2 eV of ``e0``.
    """
    de = np.asarray(energy) - e0
    step = 0.5 + np.arctan(de / 1.2) / np.pi
    white_line = 0.5 * np.exp(-0.5 * ((de - 6.0) / 2.5) ** 2)
    wiggle = 0.06 * np.sin(2 * np.pi * de / 25.0) * np.exp(-np.maximum(de, 0) / 40.0) * (de > 0)
    return step + white_line + wiggle


def default_energies(n: int, *, lo: float = 8300.0, hi: float = 8400.0, edge: float = 8347.5) -> np.ndarray:
    """``n`` strictly increasing energies over [lo, hi] eV, 7× denser over the edge.

    Like a real XANES scan: coarse steps before and after the edge, fine ones
    across it (a Gaussian density of 12 eV width around ``edge``).
    """
    if n == 1:
        return np.array([hi])
    grid = np.linspace(lo, hi, 4001)
    density = 1 + 6 * np.exp(-0.5 * ((grid - edge) / 12.0) ** 2)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return np.interp(np.linspace(0, cdf[-1], n), cdf, grid)


@dataclass(frozen=True)
class Scene:
    """Global parameters of a XANES phantom (lengths in pixels).

    Per object n (particles first, then debris): ``centre`` (N, 2) reference
    (y, x) area centroid, ``origin_offset`` (N, 2) polar origin minus centroid,
    ``radius`` (N,), ``harmonics`` (N, H, 2), ``thickness_um`` (N,), ``pattern``
    (N,), ``rate`` (N,) reaction rate, ``core_offset`` (N, 2). Per frame:
    ``jitter`` (S, E, 2), ``walk`` (S, E, N, 2), ``beam`` and ``sample_beam``
    (S, E); ``drift`` (S,) background level per scan.
    """

    shape: tuple[int, int, int, int]
    energies: np.ndarray
    centre: np.ndarray
    origin_offset: np.ndarray
    radius: np.ndarray
    harmonics: np.ndarray
    thickness_um: np.ndarray
    pattern: np.ndarray
    rate: np.ndarray
    core_offset: np.ndarray
    jitter: np.ndarray
    walk: np.ndarray
    beam: np.ndarray
    sample_beam: np.ndarray
    drift: np.ndarray
    background: FourierField
    background_level: float
    flat_counts: float
    dark_counts: float
    seed: int

    @property
    def positions(self) -> np.ndarray:
        """Centre of every object in every frame, (S, E, N, 2) pixels."""
        return self.centre + self.jitter[:, :, None, :] + self.walk

    def progress(self, s: int) -> float:
        """Charging progress 0 → 1 over the scans."""
        return s / (self.shape[0] - 1) if self.shape[0] > 1 else 0.0


def xanes_scene(
    shape: tuple[int, int, int, int],
    *,
    seed: int,
    energies: np.ndarray,
    n_particles: int = 9,
    n_debris: int = 3,
    jitter_px: float = 0.8,
    walk_px: float = 3.0,
    background: float = 0.1,
    flat_counts: float = 6000.0,
    dark_counts: float = 100.0,
) -> Scene:
    """Draw the global parameters of a XANES phantom from ``seed``."""
    s, e, y, x = shape
    rng = np.random.default_rng([seed, 1])
    n = n_particles
    jitter = rng.normal(0.0, jitter_px, (s, e, 2))
    # Smoothed random walk over the frames in acquisition order, starting at 0.
    walk = np.cumsum(rng.normal(0.0, 1.0, (s * e, n + n_debris, 2)), axis=0)
    walk = ndimage.uniform_filter1d(walk, size=min(9, s * e), axis=0, mode="nearest")
    walk -= walk[0]
    walk *= walk_px / max(np.abs(walk).max(), 1e-12)
    walk[:, n:] = 0.0  # debris only follows the stage jitter
    walk = walk.reshape(s, e, n + n_debris, 2)
    reach = np.abs(jitter[:, :, None, :] + walk).max() + 2.0  # motion plus a margin

    harmonics = np.stack(
        [rng.uniform(0.03, 0.08, (n + n_debris, 4)), rng.uniform(0, 2 * np.pi, (n + n_debris, 4))], axis=-1
    )
    extent = 1 + harmonics[..., 0].sum(axis=1)  # outline radius / radius, at most
    rows = int(np.ceil(n / np.ceil(np.sqrt(n)))) if n else 1
    cols = int(np.ceil(n / rows)) if n else 1
    cell = np.array([y / rows, x / cols])
    cells = rng.permutation(rows * cols)[:n]
    room = cell.min() / 2 - reach
    radius = np.empty(n + n_debris)
    radius[:n] = room / extent[:n] * rng.uniform(0.6, 0.8, n)
    if n and radius[:n].min() < 4:
        raise ValueError(
            f"a {y}×{x} field cannot hold {n} particles of radius ≥ 4 px moving by {reach:.1f} px; "
            "use fewer particles, a larger field or less motion"
        )
    slack = np.maximum(cell / 2 - radius[:n, None] * extent[:n, None] - reach, 0)
    centre = np.empty((n + n_debris, 2))
    centre[:n] = (np.column_stack([cells // cols, cells % cols]) + 0.5) * cell + rng.uniform(
        -1, 1, (n, 2)
    ) * slack
    mean_r = radius[:n].mean() if n else min(y, x) / 8
    radius[n:] = rng.uniform(0.12, 0.2, n_debris) * mean_r
    # Debris follows the stage jitter only: it nears a particle by at most the walk.
    apart = np.abs(walk).max() + 2.0
    for k in range(n, n + n_debris):
        centre[k] = _place_debris(
            rng, centre[:k], radius[:k] * extent[:k], radius[k] * extent[k], reach, apart, (y, x)
        )

    pattern = np.empty(n + n_debris, dtype=np.uint8)
    pattern[:n] = rng.permutation(np.resize(np.arange(4), n))
    pattern[n:] = DEBRIS
    angle = rng.uniform(0, 2 * np.pi, n + n_debris)
    return Scene(
        shape=(s, e, y, x),
        energies=np.asarray(energies, dtype=np.float64),
        centre=centre,
        origin_offset=-np.array([_centroid(h) for h in harmonics]) * radius[:, None],
        radius=radius,
        harmonics=harmonics,
        thickness_um=np.where(
            pattern == DEBRIS, rng.uniform(0.3, 0.5, n + n_debris), rng.uniform(0.8, 1.4, n + n_debris)
        ),
        pattern=pattern,
        rate=rng.uniform(0.6, 1.0, n + n_debris),
        core_offset=0.3 * np.column_stack([np.sin(angle), np.cos(angle)]),
        jitter=jitter,
        walk=walk,
        beam=1 + 0.03 * rng.normal(size=(s, e)),
        sample_beam=1 + 0.005 * rng.normal(size=(s, e)),
        drift=1 + 0.2 * rng.normal(size=s),
        background=random_field(rng, length=max(y, x) / 3, rms=0.5),
        background_level=background,
        flat_counts=flat_counts,
        dark_counts=dark_counts,
        seed=seed,
    )


def _centroid(harmonics: np.ndarray) -> np.ndarray:
    """Area centroid (y, x) of a unit-radius blob relative to its polar origin."""
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = blob_outline(theta, harmonics)
    return (2 / 3) * np.array([np.sum(r**3 * np.sin(theta)), np.sum(r**3 * np.cos(theta))]) / np.sum(r**2)


def _place_debris(
    rng: np.random.Generator,
    centres: np.ndarray,
    extents: np.ndarray,
    extent: float,
    reach: float,
    apart: float,
    field: tuple,
) -> np.ndarray:
    margin = extent + reach
    for _ in range(2000):
        c = rng.uniform([margin, margin], [field[0] - margin, field[1] - margin])
        if np.all(np.hypot(*(centres - c).T) > extents + extent + apart):
            return c
    raise ValueError("no room left for debris between the particles; pass fewer n_debris or particles")


def _object_pixels(scene: Scene, k: int, centre: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]):
    """Local polar coordinates of object ``k`` centred at ``centre`` within a 2D block.

    Returns ``(slices, rho, uy, ux)`` over the object's bounding box clipped to the
    block (``rho`` < 1 inside; ``uy, ux`` offsets from the polar origin in radii),
    or None when the object misses the block.
    """
    r = scene.radius[k]
    polar = centre + scene.origin_offset[k]
    half = r * (1 + scene.harmonics[k, :, 0].sum()) + 1
    lo = np.maximum(np.floor(polar - half).astype(int) - np.array(origin), 0)
    hi = np.minimum(np.ceil(polar + half).astype(int) + 1 - np.array(origin), shape)
    if np.any(hi <= lo):
        return None
    dy = (np.arange(lo[0], hi[0]) + origin[0] - polar[0])[:, None] / r
    dx = (np.arange(lo[1], hi[1]) + origin[1] - polar[1])[None, :] / r
    rho = np.hypot(dy, dx) / blob_outline(np.arctan2(dy, dx), scene.harmonics[k])
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1])), rho, dy, dx


def _edge_energy(scene: Scene, k: int, s: int, rho: np.ndarray, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
    """Edge energy (eV) of object ``k`` in scan ``s`` at local coordinates."""
    soc = min(scene.rate[k] * scene.progress(s), 1.0)
    pattern = scene.pattern[k]
    span = E0_CHARGED - E0_PRISTINE
    if pattern in (UNIFORM, INACTIVE):
        value = E0_PRISTINE + (span * soc if pattern == UNIFORM else 0.0)
        return np.full(np.broadcast_shapes(rho.shape, uy.shape, ux.shape), value)
    # An unreacted (pristine) core shrinking inside a shell that charges on.
    core = 0.75 - 0.55 * soc
    dist = (
        rho if pattern == SHRINKING else np.hypot(uy - scene.core_offset[k, 0], ux - scene.core_offset[k, 1])
    )
    shell = 0.5 * (1 + np.tanh((dist - core) / 0.04))
    return E0_PRISTINE + shell * span * (0.4 + 0.6 * soc)


def frame_absorbance(
    scene: Scene,
    s: int,
    e: int,
    origin: tuple[int, int],
    shape: tuple[int, int],
    *,
    field: np.ndarray | None = None,
) -> np.ndarray:
    """Noise-free absorbance of frame (scan ``s``, energy index ``e``) over a 2D block.

    ``field`` is ``scene.background`` over the block, when the caller has it
    already (it is the same in every frame).

    Returns
    -------
    ndarray of float64, shape ``shape``
    """
    energy = scene.energies[e]
    y = np.arange(origin[0], origin[0] + shape[0], dtype=np.float64)[:, None]
    x = np.arange(origin[1], origin[1] + shape[1], dtype=np.float64)[None, :]
    emid, espan = scene.energies.mean(), np.ptp(scene.energies) or 1.0
    level = scene.background_level * scene.drift[s] * (1 + 0.3 * (energy - emid) / espan)
    out = level * (1 + (scene.background(y, x) if field is None else field))
    positions = scene.positions[s, e]
    for k in range(len(scene.radius)):
        local = _object_pixels(scene, k, positions[k], origin, shape)
        if local is None:
            continue
        box, rho, uy, ux = local
        thickness = scene.thickness_um[k] * np.sqrt(np.maximum(1 - rho**2, 0))
        if scene.pattern[k] == DEBRIS:
            mu = _MU_DEBRIS * (energy / 8350.0) ** -3  # no Ni: a smooth photoabsorption slope
        else:
            mu = _MU_PRE + _MU_EDGE * ni_k_edge(energy, _edge_energy(scene, k, s, rho, uy, ux))
        out[box] += thickness * mu
    return out


def _flat_mean(scene: Scene, s: int, e: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    _, _, ny, nx = scene.shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    vignetting = 1 - 0.4 * ((y - cy) ** 2 + (x - cx) ** 2) / (cy**2 + cx**2 + 1e-12)
    response = 1 + 0.1 * (scene.energies[e] - scene.energies.mean()) / (np.ptp(scene.energies) or 1.0)
    return scene.flat_counts * scene.beam[s, e] * response * vignetting


def _dark_mean(scene: Scene, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    # A fixed pattern of the detector: the same in every frame.
    index = _rng.global_index(origin, shape, scene.shape[2:])
    return scene.dark_counts * (
        1 + 0.05 * _rng.normal(_rng.stream_key(scene.seed, _STREAMS["dark_pattern"]), index)
    )


def _counts_block(scene: Scene, name: str, block_info: dict | None = None) -> np.ndarray:
    (s0, s1), (e0, e1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    origin, shape = (y0, x0), (y1 - y0, x1 - x0)
    y = np.arange(y0, y1, dtype=np.float64)[:, None]
    x = np.arange(x0, x1, dtype=np.float64)[None, :]
    dark = _dark_mean(scene, origin, shape)
    field = scene.background(y, x) if name == "counts" else None
    mean = np.empty((s1 - s0, e1 - e0, *shape))
    for i, s in enumerate(range(s0, s1)):
        for j, e in enumerate(range(e0, e1)):
            if name == "dark":
                mean[i, j] = dark
            elif name == "flat":
                mean[i, j] = _flat_mean(scene, s, e, y, x) + dark
            else:
                transmitted = np.exp(-frame_absorbance(scene, s, e, origin, shape, field=field))
                mean[i, j] = _flat_mean(scene, s, e, y, x) * scene.sample_beam[s, e] * transmitted + dark
    index = _rng.global_index((s0, e0, y0, x0), mean.shape, scene.shape)
    return _rng.poisson(_rng.stream_key(scene.seed, _STREAMS[name]), index, mean).astype(np.uint16)


def labels_block(scene: Scene, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Object labels at reference positions (0 background, k + 1 for object k), uint16."""
    out = np.zeros(shape, dtype=np.uint16)
    for k in range(len(scene.radius)):
        local = _object_pixels(scene, k, scene.centre[k], origin, shape)
        if local is not None:
            box, rho, _, _ = local
            out[box][rho < 1] = k + 1
    return out


def edge_energy_block(scene: Scene, s: int, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel Ni edge energy (eV) of scan ``s`` at reference positions; NaN off particles."""
    out = np.full(shape, np.nan, dtype=np.float32)
    for k in range(len(scene.radius)):
        local = (
            None if scene.pattern[k] == DEBRIS else _object_pixels(scene, k, scene.centre[k], origin, shape)
        )
        if local is not None:
            box, rho, uy, ux = local
            inside = rho < 1
            out[box][inside] = _edge_energy(scene, k, s, rho, uy, ux)[inside]
    return out


def _map2d(func, scene: Scene, chunks: tuple, dtype: type, *leading: int) -> da.Array:
    """A lazy array of ``func(scene, *index, origin, shape)`` over 2D blocks, per leading index."""

    def block(block_info: dict | None = None) -> np.ndarray:
        *lead, (y0, y1), (x0, x1) = block_info[None]["array-location"]
        frames = [
            func(scene, *idx, (y0, x0), (y1 - y0, x1 - x0))
            for idx in itertools.product(*(range(a, b) for a, b in lead))
        ]
        return (
            np.stack(frames).astype(dtype, copy=False).reshape([b - a for a, b in lead] + [y1 - y0, x1 - x0])
        )

    lead_chunks = tuple((1,) * n for n in leading)
    return da.map_blocks(
        block, chunks=lead_chunks + chunks, dtype=dtype, meta=np.empty((0,) * (2 + len(leading)), dtype)
    )


def make_xanes(
    *,
    shape: tuple[int, int, int, int] = (3, 61, 256, 256),
    seed: int = 0,
    pixel_size_um: float = 0.03,
    energies_ev: np.typing.ArrayLike | None = None,
    n_particles: int = 9,
    n_debris: int = 3,
    jitter_px: float = 0.8,
    walk_px: float = 3.0,
    background: float = 0.1,
    flat_counts: float = 6000.0,
    dark_counts: float = 100.0,
    chunks: tuple[int, int, int, int] | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Build a lazy synthetic TXM-XANES stack at the Ni K-edge and its ground truth.

    Parameters
    ----------
    shape : (S, E, Y, X), keyword-only
        Scans, energies per scan and pixels.
    seed : int
        Everything is a deterministic function of ``seed``.
    pixel_size_um : float
    energies_ev : array-like of shape (E,), optional
        Strictly increasing energies (default :func:`default_energies`, 8300-8400 eV).
    n_particles, n_debris : int
        Particles (with a Ni edge) and debris blobs (without).
    jitter_px, walk_px : float
        Std of the global rigid jitter per frame; largest per-particle walk.
    background : float
        Mean background absorbance.
    flat_counts, dark_counts : float
        Mean flat-field counts at the field centre and mean dark counts.
    chunks : (S, E, Y, X), optional
        Dask chunks (default: the operando chunking policy); values do not depend on it.

    Returns
    -------
    data : xarray.Dataset
        ``counts``, ``flat``, ``dark`` uint16 (scan, energy, y, x), lazy.
    truth : xarray.Dataset
        See :func:`_truth`.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be four positive lengths (S, E, Y, X), got {shape}")
    energies = (
        default_energies(shape[1]) if energies_ev is None else np.asarray(energies_ev, dtype=np.float64)
    )
    if energies.shape != (shape[1],) or np.any(np.diff(energies) <= 0):
        raise ValueError(f"energies_ev must hold {shape[1]} strictly increasing energies, got {energies}")
    scene = xanes_scene(
        shape,
        seed=seed,
        energies=energies,
        n_particles=n_particles,
        n_debris=n_debris,
        jitter_px=jitter_px,
        walk_px=walk_px,
        background=background,
        flat_counts=flat_counts,
        dark_counts=dark_counts,
    )
    chunks = da.core.normalize_chunks(chunks or choose_chunks(shape, np.uint16, XANES_DIMS), shape)
    meta = np.empty((0,) * 4, np.uint16)
    variables = {
        name: da.map_blocks(_counts_block, scene, name, chunks=chunks, dtype=np.uint16, meta=meta)
        for name in ("counts", "flat", "dark")
    }
    attrs = {"synthetic": "operando.synth.xanes", "seed": seed}
    data = xanes_dataset(variables, energies_ev=energies, pixel_size_um=pixel_size_um, attrs=attrs)
    return data, _truth(scene, data, chunks[2:], pixel_size_um)


def _truth(scene: Scene, data: xr.Dataset, chunks: tuple, pixel_um: float) -> xr.Dataset:
    """Ground truth of a XANES phantom.

    Variables (``particle`` runs over particles, then debris):
    ``centre_px`` / ``centre_um`` (scan, energy, particle, axis): each object's
    area centroid in every frame; ``reference_centre_px`` (particle, axis);
    ``jitter_px`` (scan, energy, axis): the global rigid shift;
    ``labels`` (y, x): objects at reference positions (k + 1 for object k);
    ``edge_energy`` (scan, y, x) in eV at reference positions, NaN off particles;
    ``pattern`` (particle) with CF flags; ``is_debris`` (particle);
    ``radius_px``, ``thickness_um`` (particle); ``state_of_charge`` (scan, particle).
    The objects of frame (s, e) sit at ``labels`` shifted by
    ``centre_px[s, e] - reference_centre_px`` (pure translations).
    """
    n = len(scene.radius)
    n_scans = scene.shape[0]
    objects = [
        "background",
        *(f"particle_{k}" if p != DEBRIS else f"debris_{k}" for k, p in enumerate(scene.pattern)),
    ]
    label_dtype = np.uint8 if n < 255 else np.uint16
    label_meta = label_attrs(objects) if n < 255 else {"long_name": "object label (k + 1 for object k)"}
    labels = _map2d(labels_block, scene, chunks, label_dtype)
    edge = _map2d(edge_energy_block, scene, chunks, np.float32, n_scans)
    soc = np.array([[min(r * scene.progress(s), 1.0) for r in scene.rate] for s in range(n_scans)])
    soc[:, scene.pattern == INACTIVE] = 0.0
    soc[:, scene.pattern == DEBRIS] = np.nan
    axis = xr.Variable(
        "axis", np.arange(2), {"long_name": "axis", "flag_values": [0, 1], "flag_meanings": "y x"}
    )
    frame = ("scan", "energy", "particle", "axis")
    positions = scene.positions
    px = {"units": "pixel"}
    return xr.Dataset(
        {
            "centre_px": (frame, positions, {**px, "long_name": "object centroid (y, x) per frame"}),
            "centre_um": (
                frame,
                positions * pixel_um,
                {"units": "µm", "long_name": "object centroid (y, x) per frame"},
            ),
            "reference_centre_px": (("particle", "axis"), scene.centre, px),
            "jitter_px": (
                ("scan", "energy", "axis"),
                scene.jitter,
                {**px, "long_name": "global rigid shift"},
            ),
            "labels": (("y", "x"), labels, label_meta),
            "edge_energy": (
                ("scan", "y", "x"),
                edge,
                {"units": "eV", "long_name": "Ni K-edge energy (arctan centre)"},
            ),
            "pattern": ("particle", scene.pattern, label_attrs(PATTERNS)),
            "is_debris": ("particle", scene.pattern == DEBRIS),
            "radius_px": ("particle", scene.radius, px),
            "thickness_um": (
                "particle",
                scene.thickness_um,
                {"units": "µm", "long_name": "largest thickness"},
            ),
            "state_of_charge": (
                ("scan", "particle"),
                soc,
                {"long_name": "reacted fraction of the shell state"},
            ),
        },
        coords={
            "axis": axis,
            "particle": np.arange(n),
            **{d: data[d].variable for d in XANES_DIMS},
        },
        attrs={
            "synthetic": "operando.synth.xanes ground truth",
            "frame": "reference positions: no jitter, no walk",
        },
    )


def synth_xanes(path: str | Path, *, overwrite: bool = False, **params: object) -> Path:
    """Write a synthetic XANES stack (:func:`make_xanes` ``**params``) and its truth to ``path``.

    The truth is the sub-group ``truth`` of the same zarr store; the store is
    marked complete only when both are on disk.
    """
    return write_with_truth(*make_xanes(**params), path, overwrite=overwrite)
