"""The deep route of the first paper: particle masks from a trained network, per ROI and frame.

The paper outlines each particle with a Dual U-Net (denoiser then segmenter) run
on its region of interest, after a Cycle-GAN translated raw frames into particle
masks; the outline's image moments M00, M10, M01 give the centre of mass that
drives the alignment. :func:`roi_masks` runs either network, as saved by
:func:`~operando.models.weights.save_model`, on ROI stacks lazily, one dask chunk
of frames at a time and ``batch_size`` ROIs per forward pass; :func:`mask_centres`
reduces the masks to centres with the same moments, chunk by chunk.

Inputs are mapped to the network's range with the normalization stored in the
weights file's header, exactly as in training.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
from scipy import ndimage

from operando.analysis.xanes.align import align_rois
from operando.analysis.xanes.detect import Particles
from operando.errors import ArchitectureError, ShapeMismatchError
from operando.models.weights import ModelHeader, load_model, read_header

__all__ = ["MASK_ARCHITECTURES", "mask_centres", "mask_model_header", "model_positions", "roi_masks"]

#: Architectures that map a raw ROI to a particle mask, and the output level that
#: separates particle from background: DualUNet gives logits, CycleGAN's
#: generator a sigmoid image in [0, 1].
MASK_ARCHITECTURES: dict[str, float] = {"DualUNet": 0.0, "CycleGAN": 0.5}


def mask_model_header(model_path: str | os.PathLike) -> ModelHeader:
    """The header of a particle-mask weights file, checked to describe a one-channel mask network.

    Raises
    ------
    InputNotFoundError, WeightsFileError
        As :func:`~operando.models.weights.read_header`.
    ArchitectureError
        The file holds another network (e.g. a CT ResidualUNet) or one that does
        not take one-channel ROIs.
    """
    header = read_header(model_path)
    if header.architecture not in MASK_ARCHITECTURES:
        raise ArchitectureError(
            model_path,
            f"holds a {header.architecture}, not a particle-mask network ({', '.join(MASK_ARCHITECTURES)})",
            remedy="Pass the weights of a DualUNet or CycleGAN trained on XANES particle ROIs.",
        )
    channels = header.arguments.get("in_channels", header.arguments.get("channels_a", 1))
    if channels != 1:
        raise ArchitectureError(model_path, f"the network takes {channels} input channels, not 1 (one ROI)")
    return header


def roi_masks(
    rois: da.Array | np.ndarray,
    model_path: str | os.PathLike,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    largest_component: bool = False,
) -> da.Array:
    """Particle masks of ROI stacks by a trained DualUNet or CycleGAN, lazily.

    Parameters
    ----------
    rois : dask.array.Array or ndarray of shape (P, F, h, w)
        ROIs of each particle in each frame (e.g. absorbance from
        :func:`~operando.analysis.xanes.align.align_rois`); NaN ROIs (no data) give
        empty masks. Any ``h``, ``w``: ROIs are edge-padded to the network's divisor.
    model_path : path-like
        Weights file (:func:`~operando.models.weights.save_model`).
    device : str, keyword-only
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    batch_size : int
        ROIs per forward pass.
    largest_component : bool
        Keep only the largest connected region of each mask (drops bits of
        neighbours reaching into the ROI).

    Returns
    -------
    dask.array.Array of bool, shape (P, F, h, w)
        Chunked as ``rois``; each chunk runs the network when computed.

    Raises
    ------
    ArchitectureError
        The file holds no particle-mask network (see :func:`mask_model_header`).
    ShapeMismatchError
        ``rois`` is not 4-D.
    """
    header = mask_model_header(model_path)
    if rois.ndim != 4:
        raise ShapeMismatchError("rois", f"shape {rois.shape} is not (P, F, h, w)")
    path = Path(model_path).resolve()
    key = _file_key(path)
    _cached_model(path, key, device)  # load now: a bad file fails here, not inside compute
    rois = rois if isinstance(rois, da.Array) else da.from_array(rois, chunks=(-1, 8, -1, -1))
    rois = rois.rechunk({2: -1, 3: -1})
    return rois.map_blocks(
        _mask_block,
        path=path,
        key=key,
        device=device,
        level=MASK_ARCHITECTURES[header.architecture],
        batch_size=int(batch_size),
        largest=largest_component,
        dtype=bool,
    )


def _file_key(path: Path) -> tuple[int, int]:
    # A rewritten file (new size or time) must not be served from the cache.
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _cached_model(path: Path, key: tuple[int, int], device: str) -> tuple[torch.nn.Module, ModelHeader]:
    """The network and header of a file, loaded once per process (each dask worker has its own)."""
    return load_model(path, device=device)


def _mask_block(
    block: np.ndarray, *, path: Path, key: tuple, device: str, level: float, batch_size: int, largest: bool
) -> np.ndarray:
    model, header = _cached_model(path, key, device)
    flat = block.reshape(-1, *block.shape[2:])
    out = np.zeros(flat.shape, dtype=bool)
    for start in range(0, len(flat), batch_size):
        out[start : start + batch_size] = _forward(model, header, flat[start : start + batch_size], level)
    empty = ~np.isfinite(flat).all(axis=(1, 2))
    out[empty] = False
    if largest:
        out = np.stack([_largest_region(m) for m in out]) if len(out) else out
    return out.reshape(block.shape)


def _forward(model: torch.nn.Module, header: ModelHeader, rois: np.ndarray, level: float) -> np.ndarray:
    """Masks (N, h, w) of ROIs (N, h, w): normalize, pad to the divisor, run, crop, threshold."""
    x = np.nan_to_num(np.asarray(rois, dtype=np.float32), nan=0.0)
    if header.normalization is not None:
        x = header.normalization.apply(x)
    h, w = x.shape[1:]
    grow = [(-n) % model.divisor for n in (h, w)]
    # Edge padding, not reflection: a mirrored particle would add a second outline.
    x = np.pad(x, ((0, 0), (0, grow[0]), (0, grow[1])), mode="edge")
    device = next(model.parameters()).device
    with torch.no_grad():
        y = model(torch.from_numpy(x[:, None]).to(device))
    mask = y[1] if isinstance(y, tuple) else y  # DualUNet: (denoised, logits)
    return (mask[:, 0, :h, :w] > level).cpu().numpy()


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n < 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def mask_centres(
    masks: da.Array | np.ndarray,
    *,
    weights: da.Array | np.ndarray | None = None,
    scheduler: Any | None = None,
) -> np.ndarray:
    """Centre of mass of each mask from its image moments M00, M10, M01, chunk by chunk.

    Parameters
    ----------
    masks : dask.array.Array or ndarray of bool, shape (P, F, h, w)
        E.g. :func:`roi_masks`.
    weights : array of shape (P, F, h, w), optional, keyword-only
        Intensities (e.g. the ROIs) weighting each pixel inside the mask, clipped
        at 0; without them every mask pixel counts 1 (the outline's moments).
    scheduler : optional
        A dask scheduler or ``distributed.Client``; default dask's.

    Returns
    -------
    ndarray of float64, shape (P, F, 2)
        Centre (y, x) in ROI pixels; NaN where the mask (or its weight) is empty.
    """
    masks = da.asarray(masks)
    if masks.ndim != 4 or (weights is not None and tuple(weights.shape) != masks.shape):
        shape = None if weights is None else tuple(weights.shape)
        raise ShapeMismatchError("masks", f"shape {masks.shape} (weights {shape}) is not (P, F, h, w)")
    w = masks.astype(np.float64)
    if weights is not None:
        w = w * da.clip(da.nan_to_num(da.asarray(weights, chunks=masks.chunks).astype(np.float64)), 0, None)
    yy, xx = np.indices(masks.shape[2:], dtype=np.float64)
    m00, m10, m01 = dask.compute(
        w.sum(axis=(2, 3)), (w * yy).sum(axis=(2, 3)), (w * xx).sum(axis=(2, 3)), scheduler=scheduler
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.stack([m10 / m00, m01 / m00], axis=-1)
    return np.where(m00[..., None] > 0, centre, np.nan)


def model_positions(
    frames: da.Array,
    particles: Particles,
    model: str | Path,
    *,
    size: tuple[int, int],
    client: Any | None = None,
) -> np.ndarray:
    """Position (y, x) of every particle in every frame: the centre of its model mask.

    Each particle's ROI of ``size`` is cut at the same place in every frame,
    around its detected centroid (the detection margin covers its motion); the
    model outlines the particle there and the outline's moments give the centre.

    Parameters
    ----------
    frames : dask.array.Array of shape (F, Y, X)
        Absorbance frames, read chunk by chunk.
    particles : Particles
    model : str or Path
        Weights file (see :func:`roi_masks`).
    size : (h, w), keyword-only
    client : distributed.Client, optional

    Returns
    -------
    ndarray of shape (P, F, 2)
        float64 raw-frame pixels; NaN where the model found no particle.
    """
    half = (np.asarray(size) - 1) / 2
    origin = np.round(particles.centroid - half)  # integer origins: the cut is exact, not interpolated
    fixed = np.broadcast_to((origin + half)[:, None, :], (len(particles), frames.shape[0], 2))
    rois = align_rois(frames, fixed, size=size)
    masks = roi_masks(rois, model, largest_component=True)
    return mask_centres(masks, scheduler=client) + origin[:, None, :]
