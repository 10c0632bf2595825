"""Seam-exact overlapping patch inference: the pure (no dask) sliding-window kernel.

The dask layer maps :func:`predict_region` over output chunks; this module knows
nothing about dask or zarr. Its one promise is *seam exactness*: the logits of a
region, computed from a block that covers only the region's halo, equal the same
region cropped from one whole-array pass, because both run the model on the same
patches of one **global** patch grid and add their weighted logits voxel by voxel
in the same (global grid) order.

The grid follows MONAI's ``sliding_window_inference`` so that the results agree
with it (the test suite checks this within 1e-5):

* stride per patch axis ``int(patch * (1 - overlap))`` (at least 1), or the whole
  patch when the (padded) array is exactly one patch long;
* patch starts ``0, stride, 2·stride, …`` until a patch reaches the array end, the
  last one moved back so it ends flush with the array;
* an axis shorter than the patch is padded with zeros, ``(patch - n) // 2`` before
  and the rest after (MONAI's default ``padding_mode="constant"``, ``cval=0``);
  the padded voxels are read as zeros and never written.
* ``blend="mean"`` averages the overlapping logits (MONAI's ``"constant"``);
  ``blend="gaussian"`` weights them by MONAI's importance map (σ = 0.125 × patch).

Class labels and probabilities come from the averaged logits (average first, then
argmax / softmax): :func:`labels_from_logits`, :func:`probabilities`.

Patch axes are 2 or 3 axes of the array (``axes``); every other axis is iterated,
each index independently (e.g. ``axes=(1, 2)`` on a ``(z, y, x)`` volume predicts
every cross-section on its own with 2D patches).

**2.5D context.** With 2D patches and ``context=k``, the model of slice ``i`` of the
*context axis* (the spatial axis, among the array's last three, that is not a patch
axis) gets ``2k + 1`` input channels: slices ``i-k … i+k`` of the patch box, indices
clamped at the array ends (edge replication); its output is the logits of slice
``i``. The input box of a region grows by ``k`` along the context axis, and seam
exactness holds as before: the clamped neighbours are global indices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from operando.errors import (
    BlendModeError,
    ConfigError,
    HaloCoverageError,
    ModelOutputError,
    PatchAxesError,
    PatchOverlapError,
    PatchSizeError,
    RegionError,
)

__all__ = [
    "Halo",
    "PatchGrid",
    "blend_weights",
    "halo_for",
    "labels_from_logits",
    "predict_array",
    "predict_region",
    "probabilities",
]

Blend = Literal["mean", "gaussian"]
ModelFn = Callable[[torch.Tensor], torch.Tensor]
Region = tuple[slice, ...]


def _axis_grid(n: int, patch: int, overlap: float) -> tuple[int, tuple[int, ...]]:
    """Padding before and patch starts (array coordinates) along one axis, as MONAI."""
    size = max(n, patch)
    pad_before = (size - n) // 2
    stride = patch if size == patch else max(int(patch * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / stride)) if d * stride + patch >= size) + 1
    starts = tuple(min(d * stride, size - patch) - pad_before for d in range(count))
    return pad_before, starts


@dataclass(frozen=True)
class PatchGrid:
    """The global patch grid of an array.

    Parameters
    ----------
    shape
        Shape of the whole array (any number of axes ≥ 2).
    patch
        Patch size per patch axis (in the order of the sorted ``axes``), or one int.
    overlap
        Fraction of a patch shared with each neighbour, in [0, 1).
    axes
        The 2 or 3 patch axes; ``None`` means all axes (a 2D or 3D array). They are
        kept sorted, so patches have the array's axis order.
    context
        Neighbouring slices per side along the context axis fed as extra input
        channels (2D patches only; see the module docstring); 0: none.

    Attributes
    ----------
    starts
        Per patch axis, the patch start indices in array coordinates (negative
        when the axis is shorter than the patch and padded before).
    context_axis
        The axis whose neighbouring slices are input channels (``None`` without
        context).
    """

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    overlap: float
    axes: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    context: int = 0
    context_axis: int | None = None

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        *,
        patch: int | Sequence[int],
        overlap: float = 0.25,
        axes: Sequence[int] | None = None,
        context: int = 0,
    ) -> PatchGrid:
        """Validate the options and lay out the grid (see the class docstring)."""
        shape = tuple(int(n) for n in shape)
        axes = tuple(range(len(shape))) if axes is None else tuple(axes)
        if (
            len(axes) not in (2, 3)
            or len(set(axes)) != len(axes)
            or not all(isinstance(a, int | np.integer) and -len(shape) <= a < len(shape) for a in axes)
        ):
            raise PatchAxesError(f"axes={axes}", f"not 2 or 3 distinct axes of an array of shape {shape}")
        norm = [int(a) % len(shape) for a in axes]
        patches = (patch,) * len(axes) if isinstance(patch, int | np.integer) else tuple(patch)
        if len(patches) != len(axes) or not all(isinstance(p, int | np.integer) and p > 0 for p in patches):
            raise PatchSizeError(f"patch={patch}", f"not one positive int per patch axis {tuple(axes)}")
        if not 0 <= overlap < 1:
            raise PatchOverlapError(f"overlap={overlap}", "the overlap fraction is outside [0, 1)")
        order = np.argsort(norm)
        axes_s = tuple(norm[i] for i in order)
        patch_s = tuple(int(patches[i]) for i in order)
        starts = tuple(_axis_grid(shape[a], p, overlap)[1] for a, p in zip(axes_s, patch_s, strict=True))
        context = _check_context(context)
        return cls(
            shape, patch_s, float(overlap), axes_s, starts, context, _context_axis(shape, axes_s, context)
        )

    @property
    def other_axes(self) -> tuple[int, ...]:
        """The iterated (non-patch) axes."""
        return tuple(a for a in range(len(self.shape)) if a not in self.axes)

    @property
    def channels(self) -> int:
        """Model input channels: ``2 * context + 1``."""
        return 2 * self.context + 1

    def neighbours(self, i: int) -> np.ndarray:
        """Indices ``i-k … i+k`` along the context axis, clamped to the array (edge replication)."""
        n = self.shape[self.context_axis] if self.context else 1
        return np.clip(np.arange(i - self.context, i + self.context + 1), 0, n - 1)

    @property
    def n_patches(self) -> int:
        """Patches per index of the iterated axes."""
        return math.prod(len(s) for s in self.starts)


def _context_axis(shape: tuple[int, ...], axes: tuple[int, ...], context: int) -> int | None:
    """The spatial axis (among the last three) that is not a patch axis; ``None`` without context."""
    if not context:
        return None
    spatial = range(max(len(shape) - 3, 0), len(shape))
    free = [a for a in spatial if a not in axes]
    if len(axes) != 2 or len(free) != 1 or not set(axes) <= set(spatial):
        raise PatchAxesError(
            f"axes={axes}, context={context}",
            f"no single context axis: an array of shape {shape} needs 2 patch axes among "
            "its last three (the spatial ones), the third being the context axis",
            remedy="Pass 2D patch axes among the last three axes, e.g. axes=(1, 2) on (time, z, y, x) "
            "for context along x, or context=0.",
        )
    return free[0]


def _check_context(context: int) -> int:
    if not isinstance(context, int | np.integer) or isinstance(context, bool) or context < 0:
        raise ConfigError(
            f"context={context!r}",
            "the context (neighbouring slices per side) is not a non-negative int",
            remedy="Pass context=0 (single slices) or a small positive int such as 1 or 2.",
        )
    return int(context)


@dataclass(frozen=True)
class Halo:
    """What one output region needs from the global grid.

    Attributes
    ----------
    patches
        Per patch axis, the range of patch indices (into ``grid.starts``) whose
        patches touch the region; their product is the touching set.
    read
        The input box to read: the region ∪ those patches, clipped to the array
        (one slice per array axis).
    """

    patches: tuple[range, ...]
    read: Region


def _check_region(grid: PatchGrid, region: Sequence[slice] | None) -> Region:
    if region is None:
        return tuple(slice(0, n) for n in grid.shape)
    region = tuple(region)
    ok = len(region) == len(grid.shape) and all(isinstance(s, slice) for s in region)
    if ok:
        norm = tuple(slice(*s.indices(n)) for s, n in zip(region, grid.shape, strict=True))
        ok = all(r.step in (None, 1) and s.start < s.stop for s, r in zip(norm, region, strict=True))
        ok = ok and all(
            (r.start is None or 0 <= r.start) and (r.stop is None or r.stop <= n)
            for r, n in zip(region, grid.shape, strict=True)
        )
    if not ok:
        raise RegionError(f"region={region}", f"not a non-empty unit-step box inside the shape {grid.shape}")
    return norm


def halo_for(grid: PatchGrid, region: Sequence[slice] | None = None) -> Halo:
    """The patches that touch an output region and the input box a task must read.

    Parameters
    ----------
    grid
        The global patch grid.
    region
        One slice per array axis (``None``: the whole array).

    Returns
    -------
    Halo
        ``patches`` (index ranges per patch axis) and ``read`` (slices per array axis).
    """
    region = _check_region(grid, region)
    read = list(region)
    patches = []
    for ax, p, starts in zip(grid.axes, grid.patch, grid.starts, strict=True):
        r = region[ax]
        hit = [k for k, a in enumerate(starts) if a < r.stop and a + p > r.start]
        patches.append(range(hit[0], hit[-1] + 1))
        lo, hi = min(r.start, starts[hit[0]]), max(r.stop, starts[hit[-1]] + p)
        read[ax] = slice(max(lo, 0), min(hi, grid.shape[ax]))
    if grid.context:
        ax, r = grid.context_axis, region[grid.context_axis]
        read[ax] = slice(max(r.start - grid.context, 0), min(r.stop + grid.context, grid.shape[ax]))
    return Halo(tuple(patches), tuple(read))


def blend_weights(patch: Sequence[int], *, mode: Blend = "mean", sigma_scale: float = 0.125) -> np.ndarray:
    """Per-voxel weight of a patch's logits when overlapping patches are averaged.

    ``"mean"`` is constant 1; ``"gaussian"`` is MONAI's ``compute_importance_map``
    (σ = ``sigma_scale`` × patch size per axis, peak ≈ 1, clamped below at its
    smallest value or 1e-3), computed by the same torch operations.

    Parameters
    ----------
    patch
        Patch shape ``(*patch)``.
    mode
        ``"mean"`` or ``"gaussian"``.

    Returns
    -------
    ndarray, float32, shape ``patch``
    """
    patch = tuple(int(p) for p in patch)
    if mode == "mean":
        return np.ones(patch, np.float32)
    if mode != "gaussian":
        raise BlendModeError(f"blend={mode!r}", "unknown blending mode")
    weights = torch.ones(())
    for i, p in enumerate(patch):
        x = torch.arange(start=-(p - 1) / 2.0, end=(p - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * (p * sigma_scale) ** 2))
        weights = weights.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights, min=floor).numpy()


def _patch_boxes(grid: PatchGrid, halo: Halo, region: Region) -> list[tuple[tuple[int, ...], ...]]:
    """Per touching patch (global grid order): its start, region and patch slices per patch axis."""
    per_axis = []
    for i, ax in enumerate(grid.axes):
        r, p = region[ax], grid.patch[i]
        boxes = []
        for k in halo.patches[i]:
            a = grid.starts[i][k]
            lo, hi = max(a, r.start), min(a + p, r.stop)
            boxes.append((a, lo - r.start, hi - r.start, lo - a, hi - a))
        per_axis.append(boxes)
    return list(itertools.product(*per_axis))


def _read_patch(
    block: np.ndarray, origin: Sequence[int], grid: PatchGrid, index: tuple[int, ...], starts: Sequence[int]
) -> np.ndarray:
    """One ``(channels, *patch)`` input (zeros outside the array); ``index``: the other axes' indices."""
    src, dst = [0] * block.ndim, [None] * len(grid.axes)
    for ax, i in zip(grid.other_axes, index, strict=True):
        src[ax] = i - origin[ax]
    ctx = grid.context_axis
    if ctx is not None:
        near = grid.neighbours(src[ctx] + origin[ctx]) - origin[ctx]
        src[ctx] = slice(int(near[0]), int(near[-1]) + 1)
    for j, (ax, a, p) in enumerate(zip(grid.axes, starts, grid.patch, strict=True)):
        lo, hi = max(a, 0), min(a + p, grid.shape[ax])
        src[ax] = slice(lo - origin[ax], hi - origin[ax])
        dst[j] = slice(lo - a, hi - a)
    view = block[tuple(src)]
    if ctx is None:
        view = view[None]
    else:
        # the context axis is the only one left besides the patch axes: make it the channels
        pos = sum(a < ctx for a in grid.axes)
        view = np.moveaxis(np.take(view, near - near[0], axis=pos), pos, 0)
    if view.shape[1:] == grid.patch:
        return view
    out = np.zeros((grid.channels, *grid.patch), np.float32)
    out[(slice(None), *dst)] = view
    return out


def _run(
    model_fn: ModelFn, batch: list[np.ndarray], size: int, grid: PatchGrid, channels: int | None, device
):
    """Model logits of a batch, zero-padded to ``size`` patches (every call has one shape)."""
    x = np.zeros((size, grid.channels, *grid.patch), np.float32)
    for b, patch in enumerate(batch):
        x[b] = patch
    y = model_fn(torch.from_numpy(x).to(device))
    want = f"({size}, {channels if channels is not None else 'C'}, {', '.join(map(str, grid.patch))})"
    if not isinstance(y, torch.Tensor):
        raise ModelOutputError("model", f"returned {type(y).__name__}, expected a tensor of shape {want}")
    ok = y.ndim == 2 + len(grid.patch) and y.shape[0] == size and tuple(y.shape[2:]) == grid.patch
    if not ok or (channels is not None and y.shape[1] != channels):
        raise ModelOutputError("model", f"output shape {tuple(y.shape)}, expected {want}")
    return y[: len(batch)].float()


def predict_region(
    block: np.ndarray,
    block_origin: Sequence[int],
    region: Sequence[slice] | None,
    grid: PatchGrid,
    model_fn: ModelFn,
    *,
    out_channels: int | None = None,
    blend: Blend = "mean",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Blended logits of one output region from a block covering its halo.

    Every patch of the global grid that touches the region is run through the model
    (batched, in inference mode); its weighted logits and weights are added, in
    global grid order, only inside the region; the result is their ratio. The
    result equals the region cropped from the whole-array pass.

    Parameters
    ----------
    block
        Input, shape ``halo_for(grid, region).read`` (or any box containing it);
        any real dtype, cast to float32.
    block_origin
        Global index of ``block[0, …, 0]``.
    region
        Output box, one slice per array axis (``None``: the whole array).
    grid
        The global patch grid (:meth:`PatchGrid.build`).
    model_fn
        ``(B, 2k+1, *patch)`` float32 tensor (``k = grid.context``; one channel
        without context) → ``(B, C, *patch)`` logits (e.g. a ``torch.nn.Module``
        in eval mode).
    out_channels
        Expected C; checked when given.
    blend
        ``"mean"`` or ``"gaussian"`` (:func:`blend_weights`).
    batch_size
        Patches per model call. Every call gets exactly ``batch_size`` patches (the
        last batch is filled with zero patches whose logits are dropped), because
        a model's per-patch output can depend on the batch shape in the last bit
        (oneDNN / cuDNN pick kernels by shape): one shape keeps regions
        bit-identical to the whole-array pass.
    device
        Where the patches go and the logits are accumulated.

    Returns
    -------
    ndarray, float32, shape ``(C, *region_shape)``
    """
    region = _check_region(grid, region)
    halo = halo_for(grid, region)
    origin = tuple(int(o) for o in block_origin)
    end = tuple(o + n for o, n in zip(origin, block.shape, strict=False))
    if (
        len(origin) != len(grid.shape)
        or block.ndim != len(grid.shape)
        or not all(o <= r.start and r.stop <= e for o, e, r in zip(origin, end, halo.read, strict=True))
    ):
        raise HaloCoverageError(
            f"block at {origin} of shape {block.shape}",
            f"does not cover the halo {halo.read} of region {region}",
        )
    weights = torch.from_numpy(blend_weights(grid.patch, mode=blend)).to(device)
    boxes = _patch_boxes(grid, halo, region)
    wsum = torch.zeros([region[a].stop - region[a].start for a in grid.axes], device=device)
    for box in boxes:
        wsum[tuple(slice(b[1], b[2]) for b in box)] += weights[tuple(slice(b[3], b[4]) for b in box)]
    others = itertools.product(*(range(region[a].start, region[a].stop) for a in grid.other_axes))
    jobs = [(idx, box) for idx in others for box in boxes]
    acc: torch.Tensor | None = None
    with torch.inference_mode():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            batch = [_read_patch(block, origin, grid, idx, [b[0] for b in box]) for idx, box in chunk]
            y = _run(model_fn, batch, batch_size, grid, out_channels, device)
            if acc is None:
                acc = torch.zeros((y.shape[1], *(r.stop - r.start for r in region)), device=device)
            for (idx, box), logits in zip(chunk, y, strict=True):
                at: list[object] = [slice(None)] * (1 + len(region))
                for ax, i in zip(grid.other_axes, idx, strict=True):
                    at[1 + ax] = i - region[ax].start
                for ax, b in zip(grid.axes, box, strict=True):
                    at[1 + ax] = slice(b[1], b[2])
                inside = tuple(slice(b[3], b[4]) for b in box)
                acc[tuple(at)] += logits[(slice(None), *inside)] * weights[inside]
        assert acc is not None
        shape = [1] * (1 + len(region))
        for j, ax in enumerate(grid.axes):
            shape[1 + ax] = wsum.shape[j]
        acc /= wsum.reshape(shape)
    return acc.cpu().numpy()


def predict_array(
    array: np.ndarray,
    model_fn: ModelFn,
    *,
    patch: int | Sequence[int],
    overlap: float = 0.25,
    axes: Sequence[int] | None = None,
    context: int = 0,
    region: Sequence[slice] | None = None,
    blend: Blend = "mean",
    batch_size: int = 8,
    out_channels: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Whole-array sliding-window pass (in memory): ``(C, *array.shape)`` float32 logits.

    The reference every region of :func:`predict_region` equals; see there and
    :class:`PatchGrid` (``context``) for the parameters. ``region`` (one slice per
    axis) limits the output to that box, e.g. the centre slice of a context slab.
    """
    grid = PatchGrid.build(array.shape, patch=patch, overlap=overlap, axes=axes, context=context)
    return predict_region(
        array,
        (0,) * array.ndim,
        region,
        grid,
        model_fn,
        out_channels=out_channels,
        blend=blend,
        batch_size=batch_size,
        device=device,
    )


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """Class labels: argmax over the channel axis 0 of ``(C, …)`` logits → uint8 ``(…)``."""
    if logits.shape[0] > 256:
        raise ModelOutputError("logits", f"{logits.shape[0]} classes do not fit uint8 labels (at most 256)")
    return np.argmax(logits, axis=0).astype(np.uint8)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities: softmax over the channel axis 0 of ``(C, …)`` logits → float16."""
    z = logits.astype(np.float32) - logits.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float16)
