"""Synthetic operando micro-CT of a Li-metal symmetric cell, with ground truth.

Modelled on operando micro-CT of Li | polymer electrolyte | Li cells (1.33 µm
voxels, 25 scans over 240 min): ``z`` is the electrode normal, the stripping
electrode fills the low-``z`` side and the plating electrode the high-``z`` side,
both with rough surfaces (smooth random 2D height maps).

Charge (first half of the time span)
    pits grow into the stripping electrode; a deposited Li layer grows on the
    plating electrode and dendrites (tapered, tilted rods) grow from it into the
    electrolyte; the cell swells (the plating electrode moves away, widening the
    gap between the electrodes).
Discharge (second half)
    redeposited Li fills the pits from their bottom and coats the stripping
    surface; the deposited layer on the plating side shrinks; dendrites shrink
    only partly (dead Li stays); the gap stays swollen.

Classes (uint8, CF flags): ``background`` (electrolyte) 0, ``electrode`` 1,
``deposited`` 2, ``dendrite`` 3, ``pit`` 4. Redeposited Li is class
``deposited`` on the stripping side: post-processing tells it apart by depth
along ``z``, as is done for real data.

Every timestep but the last (the reference) is misaligned by a rigid motion
(three small rotations and three translations about the volume centre), applied
analytically: each voxel evaluates the geometry at its inverse-transformed
position. The image is a low-contrast class-to-intensity map, blurred by a
small Gaussian (``map_overlap`` with a halo) plus Gaussian noise keyed by global
voxel index, so no result depends on the dask chunking.

Static texture (``texture_rms``, default off)
    Real Li foil is not a flat grey: grains, impurities and voids give it a
    texture that stays put in the cell while pits, Li layers and swelling
    change around it, and that is what a registration locks onto. With
    ``texture_rms > 0`` the electrode intensity is multiplied by
    ``1 + texture_rms · n(q)``, where ``n`` is a smooth 3D random field
    (:func:`operando.synth._shapes.lattice_noise`, two octaves of lattice
    spacing ``texture_length_voxels`` and half that, unit rms) evaluated at the
    reference-frame point ``q``: it moves rigidly with the cell and, being hashed
    from global lattice indices, does not depend on the chunking. Without it the
    evolving cell has no static lateral structure and a rigid registration of it
    is ill-posed. The plating electrode's texture moves with it as the cell
    swells (by ``swelling`` along ``z``). The labels do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from operando.io.chunking import choose_chunks
from operando.io.layout import CT_DIMS, ct_dataset, label_attrs
from operando.io.store import write_with_truth
from operando.synth import _rng
from operando.synth._shapes import FourierField, bilinear, lattice_noise, random_field, rotation_matrix

__all__ = [
    "CLASS_INTENSITY",
    "CT_CLASSES",
    "Cell",
    "cell_geometry",
    "cell_labels",
    "make_ct",
    "synth_ct",
]

CT_CLASSES = ("background", "electrode", "deposited", "dendrite", "pit")
BACKGROUND, ELECTRODE, DEPOSITED, DENDRITE, PIT = range(5)
#: Mean intensity per class: Li and the polymer electrolyte absorb alike, pits are voids.
CLASS_INTENSITY = np.array([0.40, 0.45, 0.47, 0.46, 0.12], dtype=np.float32)

_SLAB = 8  # z-slices classified at once, to bound a kernel's temporaries
_NOISE_STREAM = 1
_TEXTURE_STREAM = 2
# 1 / rms of 2·coarse + fine: lattice noise has variance (E[w² + (1 − w)²])³ = 0.410
# averaged over a lattice cell (smoothstep weights w), and the two octaves add 5×.
_TEXTURE_NORM = 1 / np.sqrt(5 * 0.40994)


@dataclass(frozen=True)
class Cell:
    """Global parameters of a CT phantom; lengths in voxels, per-time arrays of shape (T,).

    Attributes
    ----------
    shape : tuple of int
        (T, Z, Y, X).
    charge, discharge : ndarray of shape (T,)
        Progress of charge and of discharge, each 0 → 1.
    z_strip, z_plate : float
        Mean planes of the stripping and (unswollen) plating electrode surfaces.
    rough_strip, rough_plate, dep_field, redep_field : FourierField
        Surface roughness and the lateral modulation of the Li layers.
    deposited, redeposited, swelling : ndarray of shape (T,)
        Mean deposited / redeposited layer thickness and gap increase per time.
    pits : ndarray of shape (P, 4)
        Pit centre y, x, radius and full depth.
    dendrites : ndarray of shape (D, 6)
        Root y, x, radius, full length and tilt (dy/dz, dx/dz) of each dendrite.
    rotations : ndarray of shape (T, 3, 3)
    shifts : ndarray of shape (T, 3)
        Rigid motion of each timestep: reference point q appears at
        ``rotations[t] @ (q - centre) + centre + shifts[t]``.
    centre : ndarray of shape (3,)
    texture_rms, texture_length : float
        Relative rms and lattice spacing (voxels) of the static electrode texture.
    texture_key : int
        Its random stream (a uint64 key).
    """

    shape: tuple[int, int, int, int]
    charge: np.ndarray
    discharge: np.ndarray
    z_strip: float
    z_plate: float
    rough_strip: FourierField
    rough_plate: FourierField
    dep_field: FourierField
    redep_field: FourierField
    deposited: np.ndarray
    redeposited: np.ndarray
    swelling: np.ndarray
    pits: np.ndarray
    dendrites: np.ndarray
    angles_deg: np.ndarray
    rotations: np.ndarray
    shifts: np.ndarray
    centre: np.ndarray
    texture_rms: float = 0.0
    texture_length: float = 6.0
    texture_key: int = 0


def _progress(times: np.ndarray, charge_end: float) -> tuple[np.ndarray, np.ndarray]:
    end = times[-1]
    charge = np.clip(times / charge_end, 0, 1) if charge_end > 0 else np.ones_like(times)
    discharge = np.clip((times - charge_end) / (end - charge_end), 0, 1) if end > charge_end else 0 * times
    return charge, discharge


def cell_geometry(
    shape: tuple[int, int, int, int],
    *,
    seed: int,
    times_min: np.ndarray,
    charge_end_min: float,
    n_pits: int | None = None,
    n_dendrites: int | None = None,
    swelling_voxels: float = 4.0,
    max_angle_deg: float = 0.8,
    max_shift_voxels: float = 3.0,
    texture_rms: float = 0.0,
    texture_length_voxels: float = 6.0,
) -> Cell:
    """Draw the global parameters of a cell phantom from ``seed``.

    Sizes scale with the cell thickness ``Z`` and feature counts with the lateral
    area, so a bigger phantom is a bigger piece of the same kind of cell.
    """
    t, z, y, x = shape
    rng = np.random.default_rng([seed, 0])
    charge, discharge = _progress(np.asarray(times_min, dtype=np.float64), charge_end_min)
    lateral = dict(length=max(y, x) / 6)
    if n_pits is None:
        # Pits cover about 15 % of the stripping surface.
        n_pits = max(3, round(0.15 * y * x / (np.pi * (0.075 * z) ** 2)))
    pits = np.column_stack(
        [
            rng.uniform(0, y, n_pits),
            rng.uniform(0, x, n_pits),
            rng.uniform(0.05, 0.1, n_pits) * z,
            rng.uniform(0.08, 0.16, n_pits) * z,
        ]
    )
    if n_dendrites is None:
        n_dendrites = max(3, round(0.01 * y * x / (np.pi * (0.022 * z) ** 2)))
    dendrites = np.column_stack(
        [
            rng.uniform(0, y, n_dendrites),
            rng.uniform(0, x, n_dendrites),
            rng.uniform(0.015, 0.03, n_dendrites) * z,
            rng.uniform(0.15, 0.28, n_dendrites) * z,
            rng.uniform(-0.25, 0.25, (n_dendrites, 2)),
        ]
    )
    angles = rng.uniform(-max_angle_deg, max_angle_deg, (t, 3))
    shifts = rng.uniform(-max_shift_voxels, max_shift_voxels, (t, 3))
    angles[-1], shifts[-1] = 0.0, 0.0
    return Cell(
        shape=(t, z, y, x),
        charge=charge,
        discharge=discharge,
        z_strip=0.3 * z,
        z_plate=0.7 * z,
        rough_strip=random_field(rng, rms=0.015 * z, **lateral),
        rough_plate=random_field(rng, rms=0.015 * z, **lateral),
        dep_field=random_field(rng, rms=0.3, **lateral),
        redep_field=random_field(rng, rms=0.3, **lateral),
        deposited=0.08 * z * (charge - 0.8 * discharge),
        redeposited=0.04 * z * discharge,
        swelling=swelling_voxels * charge,
        pits=pits,
        dendrites=dendrites,
        angles_deg=angles,
        rotations=np.stack([rotation_matrix(a) for a in angles]),
        shifts=shifts,
        centre=(np.array([z, y, x], dtype=np.float64) - 1) / 2,
        texture_rms=float(texture_rms),
        texture_length=float(texture_length_voxels),
        texture_key=int(_rng.stream_key(seed, _TEXTURE_STREAM)),
    )


def cell_labels(
    cell: Cell, t: int, origin: tuple[int, int, int], shape: tuple[int, int, int], *, moved: bool
) -> np.ndarray:
    """Class labels of one block of timestep ``t``.

    Parameters
    ----------
    cell : Cell
    t : int
        Timestep index.
    origin, shape : tuple of int
        (z, y, x) position of the block's first voxel and the block's shape.
    moved : bool
        Apply timestep ``t``'s rigid motion (the measured frame) or not (the
        reference frame of the ground truth).

    Returns
    -------
    ndarray of uint8, shape ``shape``
    """
    inverse, inv_offset = _inverse(cell, t, moved)
    forward = inverse.T
    fwd_offset = -forward @ inv_offset
    first = np.array(origin, dtype=np.float64)
    lo, hi = _box_image(inverse, inv_offset, first, first + np.array(shape) - 1)
    gy0, gx0 = int(np.floor(lo[1])), int(np.floor(lo[2]))
    gy = np.arange(gy0, int(np.floor(hi[1])) + 2, dtype=np.float64)[:, None]
    gx = np.arange(gx0, int(np.floor(hi[2])) + 2, dtype=np.float64)[None, :]
    grids = np.stack(
        [f(gy, gx) for f in (cell.rough_strip, cell.rough_plate, cell.dep_field, cell.redep_field)]
    )
    # Each pit or dendrite only touches the voxels of its bounding box's image.
    features = []
    for paint, params, (qlo, qhi) in _features(cell, t):
        plo, phi = _box_image(forward, fwd_offset, qlo, qhi)
        start = np.maximum(np.ceil(plo - first), 0).astype(int)
        stop = np.minimum(np.floor(phi - first) + 1, shape).astype(int)
        if np.all(stop > start):
            features.append((paint, params, start, stop))

    out = np.empty(shape, dtype=np.uint8)
    pz, py, px = (np.arange(o, o + n, dtype=np.float64) for o, n in zip(origin, shape, strict=True))
    for z0 in range(0, shape[0], _SLAB):
        z1 = min(z0 + _SLAB, shape[0])
        q = _sample_points(inverse, inv_offset, (pz[z0:z1], py, px))
        surfaces = bilinear(grids, (gy0, gx0), q[1], q[2])
        labels, strip = _layers(cell, t, q[0], surfaces)
        q = [np.broadcast_to(c, labels.shape) for c in q]
        strip = np.broadcast_to(strip, labels.shape)
        for paint, params, start, stop in features:
            lo_z, hi_z = max(start[0], z0), min(stop[0], z1)
            if lo_z < hi_z:
                box = (slice(lo_z - z0, hi_z - z0), slice(start[1], stop[1]), slice(start[2], stop[2]))
                paint(cell, t, params, labels[box], [c[box] for c in q], strip[box])
        out[z0:z1] = labels
    return out


def _inverse(cell: Cell, t: int, moved: bool) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) of p ↦ q: voxel p shows the sample point q = Rᵀ(p − c − s) + c."""
    rot, shift = (cell.rotations[t], cell.shifts[t]) if moved else (np.eye(3), np.zeros(3))
    return rot.T, cell.centre - rot.T @ (cell.centre + shift)


def _sample_points(inverse: np.ndarray, offset: np.ndarray, axes: tuple) -> list[np.ndarray]:
    """Reference-frame coordinates (z, y, x) of the voxel grid ``axes`` (three 1D arrays)."""
    p = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    # Only the non-zero terms, so that without rotation the height maps are
    # interpolated once per (y, x) instead of once per voxel.
    return [sum(inverse[i, j] * p[j] for j in range(3) if inverse[i, j] != 0) + offset[i] for i in range(3)]


def cell_texture(cell: Cell, t: int, origin: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Relative static texture ``texture_rms · n(q)`` of the measured block (float32, ``shape``).

    Two octaves of :func:`~operando.synth._shapes.lattice_noise` (spacing ``L`` and
    ``L/2``, weights 2:1) scaled to unit rms on average, at the sample points of
    timestep ``t``'s voxels; the plating electrode's texture moves with it as the
    cell swells.
    """
    inverse, offset = _inverse(cell, t, moved=True)
    middle = (cell.z_strip + cell.z_plate) / 2
    out = np.empty(shape, dtype=np.float32)
    pz, py, px = (np.arange(o, o + n, dtype=np.float64) for o, n in zip(origin, shape, strict=True))
    for z0 in range(0, shape[0], _SLAB):
        q = _sample_points(inverse, offset, (pz[z0 : z0 + _SLAB], py, px))
        q[0] = np.where(q[0] > middle, q[0] - cell.swelling[t], q[0])
        coarse = lattice_noise(np.uint64(cell.texture_key), cell.texture_length, *q)
        fine = lattice_noise(np.uint64(cell.texture_key ^ 1), cell.texture_length / 2, *q)
        out[z0 : z0 + _SLAB] = cell.texture_rms * _TEXTURE_NORM * (2 * coarse + fine)
    return out


def _box_image(
    matrix: np.ndarray, offset: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the affine image ``matrix @ v + offset`` of the box [lo, hi]."""
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True))).reshape(3, -1)
    image = matrix @ corners + offset[:, None]
    return image.min(axis=1), image.max(axis=1)


def _layers(cell: Cell, t: int, z: np.ndarray, surfaces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Electrodes and the deposited / redeposited layers; also the stripping surface."""
    rough_s, rough_p, dep_mod, redep_mod = surfaces
    strip = cell.z_strip + rough_s
    plate = cell.z_plate + cell.swelling[t] + rough_p
    labels = np.zeros(np.broadcast_shapes(z.shape, strip.shape), dtype=np.uint8)
    labels[(z <= strip) | (z >= plate)] = ELECTRODE
    deposited = np.maximum(cell.deposited[t] * (1 + dep_mod), 0)
    labels[(z < plate) & (z >= plate - deposited)] = DEPOSITED
    redeposited = np.maximum(cell.redeposited[t] * (1 + redep_mod), 0)
    labels[(z > strip) & (z <= strip + redeposited)] = DEPOSITED
    return labels, strip


def _features(cell: Cell, t: int) -> list:
    """(painter, parameters, reference-frame bounding box) of every grown pit and dendrite."""
    out = []
    rough = np.abs(cell.rough_strip.amplitudes).sum()
    for cy, cx, radius, depth in cell.pits:
        full = depth * cell.charge[t]
        if full > 0:
            lo = np.array([cell.z_strip - rough - full, cy - radius, cx - radius])
            hi = np.array([cell.z_strip + rough, cy + radius, cx + radius])
            out.append((_paint_pit, (cy, cx, radius, full), (lo, hi)))
    for ry, rx, radius, length, ty, tx in cell.dendrites:
        grown = length * cell.charge[t] * (1 - 0.4 * cell.discharge[t])
        if grown > 0:
            root = np.array([cell.z_plate + cell.swelling[t] + cell.rough_plate(ry, rx), ry, rx])
            tip = root + grown * np.array([-1.0, ty, tx]) / np.sqrt(1 + ty**2 + tx**2)
            box = (np.minimum(root, tip) - radius, np.maximum(root, tip) + radius)
            out.append((_paint_dendrite, (root, tip, radius), box))
    return out


def _paint_dendrite(
    cell: Cell, t: int, params: tuple, labels: np.ndarray, q: list, strip: np.ndarray
) -> None:
    root, tip, radius = params
    axis = tip - root
    grown = np.sqrt(axis @ axis)
    axis = axis / grown
    dz, dy, dx = q[0] - root[0], q[1] - root[1], q[2] - root[2]
    along = dz * axis[0] + dy * axis[1] + dx * axis[2]
    across2 = dz**2 + dy**2 + dx**2 - along**2
    # Tapered: full radius at the root, 30 % of it at the tip.
    inside = (along >= 0) & (along <= grown) & (across2 <= (radius * (1 - 0.7 * along / grown)) ** 2)
    labels[inside & (labels == BACKGROUND)] = DENDRITE


def _paint_pit(cell: Cell, t: int, params: tuple, labels: np.ndarray, q: list, strip: np.ndarray) -> None:
    cy, cx, radius, full = params
    z, y, x = q
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / radius**2
    depth = full * np.sqrt(np.maximum(1 - r2, 0))
    bottom = strip - depth
    inside = (r2 < 1) & (z <= strip) & (z > bottom)
    # Redeposited Li fills a pit from its bottom; 90 % full after discharge.
    filled = z <= bottom + 0.9 * cell.discharge[t] * depth
    labels[inside] = np.where(filled[inside], DEPOSITED, PIT)


def _labels_block(cell: Cell, moved: bool, block_info: dict | None = None) -> np.ndarray:
    (t0, t1), *space = block_info[None]["array-location"]
    origin = tuple(a for a, _ in space)
    shape = tuple(b - a for a, b in space)
    return np.stack([cell_labels(cell, t, origin, shape, moved=moved) for t in range(t0, t1)])


def _image_block(cell: Cell, block_info: dict | None = None) -> np.ndarray:
    """Intensity of a block before blur and noise: class means, the electrode textured."""
    (t0, t1), *space = block_info[None]["array-location"]
    origin = tuple(a for a, _ in space)
    shape = tuple(b - a for a, b in space)
    out = np.empty((t1 - t0, *shape), dtype=np.float32)
    for i, t in enumerate(range(t0, t1)):
        labels = cell_labels(cell, t, origin, shape, moved=True)
        out[i] = CLASS_INTENSITY[labels]
        if cell.texture_rms > 0:
            electrode = labels == ELECTRODE
            out[i][electrode] *= 1 + cell_texture(cell, t, origin, shape)[electrode]
    return out


def _blur(block: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    return ndimage.gaussian_filter(block, (0, sigma, sigma, sigma), truncate=truncate, mode="nearest")


def _add_noise(block: np.ndarray, key: np.uint64, sigma: float, block_info: dict | None = None) -> np.ndarray:
    info = block_info[0]
    origin = [a for a, _ in info["array-location"]]
    index = _rng.global_index(origin, block.shape, info["shape"])
    return (block + sigma * _rng.normal(key, index)).astype(np.float32)


def _class_counts(block: np.ndarray) -> np.ndarray:
    counts = [np.bincount(b.ravel(), minlength=len(CT_CLASSES)) for b in block]
    return np.stack(counts).astype(np.int64)[:, None, None, None, :]


def make_ct(
    *,
    shape: tuple[int, int, int, int] = (6, 96, 128, 128),
    seed: int = 0,
    voxel_size_um: float = 1.33,
    times_min: np.typing.ArrayLike | None = None,
    charge_end_min: float | None = None,
    n_pits: int | None = None,
    n_dendrites: int | None = None,
    swelling_um: float | None = None,
    max_angle_deg: float = 0.8,
    max_shift_voxels: float = 3.0,
    noise_sigma: float = 0.02,
    blur_sigma_voxels: float = 0.8,
    texture_rms: float = 0.0,
    texture_length_voxels: float = 6.0,
    chunks: tuple[int, int, int, int] | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Build a lazy synthetic CT time series of a Li-metal symmetric cell and its truth.

    Parameters
    ----------
    shape : (T, Z, Y, X), keyword-only
        Timesteps and voxels; ``z`` is the electrode normal.
    seed : int
        Everything is a deterministic function of ``seed``.
    voxel_size_um : float
    times_min : array-like of shape (T,), optional
        Scan times (default: evenly over 0-240 min).
    charge_end_min : float, optional
        End of charge (default: half of the last time); discharge follows.
    n_pits, n_dendrites : int, optional
        Feature counts (default: proportional to the lateral area).
    swelling_um : float, optional
        Gap increase over charge (default 4 voxels).
    max_angle_deg, max_shift_voxels : float
        Bounds of the per-timestep rigid misalignment (the last timestep has none).
    noise_sigma, blur_sigma_voxels : float
        Gaussian noise (intensity units) and Gaussian blur (voxels).
    texture_rms, texture_length_voxels : float
        Static electrode texture that moves with the cell: relative rms (e.g.
        0.05 for 5 % contrast; 0 = flat electrodes) and correlation length
        (voxels). See the module docstring.
    chunks : (T, Z, Y, X), optional
        Dask chunks (default: the operando chunking policy); the values do not
        depend on it.

    Returns
    -------
    data : xarray.Dataset
        ``intensity`` float32 (time, z, y, x), lazy.
    truth : xarray.Dataset
        Reference-frame ``labels`` and the parameters behind them (see :func:`_truth`).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be four positive lengths (T, Z, Y, X), got {shape}")
    t = shape[0]
    times = np.linspace(0.0, 240.0, t) if times_min is None else np.asarray(times_min, dtype=np.float64)
    if times.shape != (t,) or np.any(np.diff(times) <= 0):
        raise ValueError(f"times_min must hold {t} strictly increasing times, got {times}")
    cell = cell_geometry(
        shape,
        seed=seed,
        times_min=times,
        charge_end_min=times[-1] / 2 if charge_end_min is None else charge_end_min,
        n_pits=n_pits,
        n_dendrites=n_dendrites,
        swelling_voxels=4.0 if swelling_um is None else swelling_um / voxel_size_um,
        max_angle_deg=max_angle_deg,
        max_shift_voxels=max_shift_voxels,
        texture_rms=texture_rms,
        texture_length_voxels=texture_length_voxels,
    )
    if not (texture_rms >= 0 and texture_length_voxels > 0):
        raise ValueError(
            f"texture_rms must be ≥ 0 and texture_length_voxels > 0, got {texture_rms}, {texture_length_voxels}"
        )
    chunks = da.core.normalize_chunks(chunks or choose_chunks(shape, np.float32, CT_DIMS), shape)

    def labels(moved: bool) -> da.Array:
        return da.map_blocks(
            _labels_block, cell, moved, chunks=chunks, dtype=np.uint8, meta=np.empty((0,) * 4, np.uint8)
        )

    image = da.map_blocks(
        _image_block, cell, chunks=chunks, dtype=np.float32, meta=np.empty((0,) * 4, np.float32)
    )
    if blur_sigma_voxels > 0:
        truncate = 3.0
        halo = int(truncate * blur_sigma_voxels + 0.5)
        image = image.map_overlap(
            _blur,
            depth=(0, halo, halo, halo),
            boundary="nearest",
            sigma=blur_sigma_voxels,
            truncate=truncate,
            dtype=np.float32,
        )
    image = image.map_blocks(_add_noise, _rng.stream_key(seed, _NOISE_STREAM), noise_sigma, dtype=np.float32)
    attrs = {
        "synthetic": "operando.synth.ct",
        "seed": seed,
        "reference_time_index": t - 1,
        "texture_rms": texture_rms,
    }
    data = ct_dataset(image, voxel_size_um=voxel_size_um, times_min=times, attrs=attrs)
    return data, _truth(cell, labels(False), data, voxel_size_um)


def _truth(cell: Cell, labels: da.Array, data: xr.Dataset, voxel_um: float) -> xr.Dataset:
    """Ground truth of a CT phantom.

    Variables: ``labels`` (time, z, y, x) uint8 in the reference frame;
    ``voxel_count`` and ``volume_um3`` (time, class), reduced chunk by chunk;
    ``angles_deg`` (about z, y, x) and ``translation_um`` (time, axis) with
    ``rotation_centre_um`` (axis); ``surface_stripping_um``,
    ``surface_plating_um`` and ``gap_um`` (time): mean planes of the two electrode
    surfaces along z; ``charge_fraction`` and ``discharge_fraction`` (time).
    """
    nz, ny, nx = (len(c) for c in labels.chunks[1:])
    counts = labels.map_blocks(
        _class_counts,
        new_axis=4,
        chunks=(labels.chunks[0], (1,) * nz, (1,) * ny, (1,) * nx, (len(CT_CLASSES),)),
        dtype=np.int64,
    ).sum(axis=(1, 2, 3))
    classes = xr.Variable("class", np.arange(len(CT_CLASSES)), label_attrs(CT_CLASSES))
    axis = xr.Variable(
        "axis", np.arange(3), {"long_name": "axis", "flag_values": [0, 1, 2], "flag_meanings": "z y x"}
    )
    strip = np.full(cell.shape[0], cell.z_strip * voxel_um)
    plate = (cell.z_plate + cell.swelling) * voxel_um
    um = {"units": "µm"}
    return xr.Dataset(
        {
            "labels": (CT_DIMS, labels, label_attrs(CT_CLASSES)),
            "voxel_count": (("time", "class"), counts, {"long_name": "voxels per class"}),
            "volume_um3": (
                ("time", "class"),
                counts * voxel_um**3,
                {"units": "µm³", "long_name": "volume per class"},
            ),
            "angles_deg": (
                ("time", "axis"),
                cell.angles_deg,
                {"units": "degree", "long_name": "rotation about z, y, x"},
            ),
            "translation_um": (
                ("time", "axis"),
                cell.shifts * voxel_um,
                {**um, "long_name": "translation along z, y, x"},
            ),
            "rotation_centre_um": ("axis", cell.centre * voxel_um, um),
            "surface_stripping_um": (
                "time",
                strip,
                {**um, "long_name": "stripping electrode surface (mean z)"},
            ),
            "surface_plating_um": ("time", plate, {**um, "long_name": "plating electrode surface (mean z)"}),
            "gap_um": ("time", plate - strip, {**um, "long_name": "gap between electrode surfaces"}),
            "charge_fraction": ("time", cell.charge),
            "discharge_fraction": ("time", cell.discharge),
        },
        coords={"class": classes, "axis": axis, **{d: data[d].variable for d in CT_DIMS}},
        attrs={
            "synthetic": "operando.synth.ct ground truth",
            "frame": "reference (last timestep); data voxel p shows q = Rᵀ(p − c − s) + c",
            "redeposited": "redeposited Li is class 'deposited' on the stripping (low-z) side",
            "reference_time_index": cell.shape[0] - 1,
        },
    )


def synth_ct(path: str | Path, *, overwrite: bool = False, **params: object) -> Path:
    """Write a synthetic CT phantom (:func:`make_ct` ``**params``) and its truth to ``path``.

    The truth is the sub-group ``truth`` of the same zarr store; the store is
    marked complete only when both are on disk.
    """
    return write_with_truth(*make_ct(**params), path, overwrite=overwrite)
