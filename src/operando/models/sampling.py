"""Training data from sparse labels: slice splits, patches centred on labelled voxels, augmentation.

Labelled slices along the chosen axis are split into train / validation / test
*by slice* (no slice feeds two splits). 2D training reads whole slices (cached
within a byte budget) and crops patches; 3D training reads cubes lazily from the
dask-backed image and keeps only the labels of its own split's slices, so a
validation slice never leaks into a training cube.

With ``context = k`` (2D only, "2.5D"), an image patch is the stack of the slice
and its ``k`` neighbours per side along the axis, ``(2k + 1, P, P)``, indices
clamped at the volume ends as inference does
(:class:`~operando.engine.patches.PatchGrid`); the labels are the centre slice's.
The neighbours are image only, so no other split's labels leak in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np

from operando.errors import TrainingDataError
from operando.models.labels import SparseLabels

__all__ = ["PatchSource", "Split", "augment", "split_slices"]

SliceKey = tuple[int, int]  # (time index, slice index along the axis)


@dataclass(frozen=True)
class Split:
    """Labelled slices ``(time, index)`` per split."""

    train: tuple[SliceKey, ...]
    validation: tuple[SliceKey, ...]
    test: tuple[SliceKey, ...]

    def to_dict(self) -> dict:
        return {k: [list(s) for s in getattr(self, k)] for k in ("train", "validation", "test")}


def split_slices(
    keys: Sequence[SliceKey], *, fractions: Sequence[float] = (0.70, 0.15, 0.15), seed: int = 0
) -> Split:
    """Shuffle labelled slices (deterministic in ``seed``) into train / validation / test.

    Each split gets at least one slice; validation and test get ``round(n * fraction)``.

    Raises
    ------
    TrainingDataError
        If fewer than three slices are labelled.
    """
    keys = sorted(keys)
    if len(keys) < 3:
        raise TrainingDataError(
            "labels",
            f"{len(keys)} labelled slice(s) along the training axis; train, validation and test need 3",
        )
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(max(1, round(len(keys) * fractions[1])), len(keys) - 2)
    n_test = min(max(1, round(len(keys) * fractions[2])), len(keys) - 1 - n_val)
    pick = [keys[i] for i in order]
    return Split(
        tuple(sorted(pick[n_val + n_test :])),
        tuple(sorted(pick[:n_val])),
        tuple(sorted(pick[n_val : n_val + n_test])),
    )


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, rotate: bool = True, jitter: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90° rotations (square patches) and intensity scale/shift of one patch.

    Parameters
    ----------
    x : ndarray of shape (*P) or (C, *P)
        Normalised image patch; a leading channel axis (``x.ndim == y.ndim + 1``)
        holds neighbouring slices: all move together, and their order is reversed
        at random (a mirror along the slicing axis).
    y : ndarray of shape (*P)
        Its labels; moved with the image, never jittered.
    """
    lead = x.ndim - y.ndim
    for ax in range(y.ndim):
        if rng.random() < 0.5:
            x, y = np.flip(x, lead + ax), np.flip(y, ax)
    if rotate:
        a, b = rng.choice(y.ndim, size=2, replace=False)
        if y.shape[a] == y.shape[b]:
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, axes=(lead + a, lead + b)), np.rot90(y, k, axes=(a, b))
    # only stacks draw here, so single-slice runs keep their random stream
    if lead and x.shape[0] > 1 and rng.random() < 0.5:
        x = x[::-1]
    if jitter:
        x = x * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter / 2, jitter / 2)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], *, mode: str) -> np.ndarray:
    """``array[start:start+size]`` per axis, padded (edge values or zeros) where it leaves the array."""
    box = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, size, array.shape, strict=True))
    pad = [(b.start - s, s + n - b.stop) for b, s, n in zip(box, start, size, strict=True)]
    out = array[box]
    return np.pad(out, pad, mode=mode) if any(p != (0, 0) for p in pad) else out


class PatchSource:
    """Normalised image / label patches of the labelled slices along one axis.

    Parameters
    ----------
    image : dask.array.Array of shape (T, Z, Y, X)
        The image, read lazily.
    labels : SparseLabels
        Matching sparse labels (0 = unlabelled).
    axis : int
        Spatial axis (0 z, 1 y, 2 x) along which slices are labelled and split.
    spatial_dims : {2, 3}
        2: patches of the slice plane; 3: cubes centred on a labelled slice.
    patch : int
        Patch edge in voxels.
    normalize : callable
        ``ndarray -> float32 ndarray`` applied to every image read.
    cache_bytes : int
        Budget of the 2D slice cache.
    context : int
        2D only: neighbouring slices per side stacked as channels (module docstring).
    """

    def __init__(
        self,
        image: da.Array,
        labels: SparseLabels,
        *,
        axis: int,
        spatial_dims: int,
        patch: int,
        normalize,
        cache_bytes: int = 1 << 30,
        context: int = 0,
    ) -> None:
        self.image, self.labels, self.axis, self.dims = image, labels, axis, spatial_dims
        self.patch, self.normalize, self.cache_bytes = patch, normalize, cache_bytes
        self.context = context
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _slice_box(self, i: int) -> tuple[slice, slice, slice]:
        box = [slice(0, n) for n in self.labels.shape]
        box[self.axis] = slice(i, i + 1)
        return tuple(box)

    def _stack(self, t: int, i: int) -> np.ndarray:
        """Normalised slices ``i-k … i+k`` (clamped to the volume), shape (2k + 1, A, B)."""
        n = self.labels.shape[self.axis]
        near = np.clip(np.arange(i - self.context, i + self.context + 1), 0, n - 1)
        box = list(self._slice_box(i))
        box[self.axis] = slice(int(near[0]), int(near[-1]) + 1)
        img = self.normalize(np.asarray(self.image[(t, *box)].compute(scheduler="synchronous")))
        return np.moveaxis(np.take(img, near - near[0], axis=self.axis), self.axis, 0)

    def slice_pair(self, key: SliceKey) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image stack (2k + 1, A, B) and labels (A, B) of one slice (A, B: the other axes)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t, i = key
        box = self._slice_box(i)
        pair = (self._stack(t, i), np.squeeze(self.labels.read(t, box), self.axis))
        self._cache[key] = pair
        while (
            sum(a.nbytes + b.nbytes for a, b in self._cache.values()) > self.cache_bytes
            and len(self._cache) > 1
        ):
            self._cache.popitem(last=False)
        return pair

    def sample(
        self, key: SliceKey, keep: set[SliceKey], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One patch centred (±patch/4) on a labelled voxel of slice ``key``, class-balanced.

        ``keep`` are the slices of this split: in 3D, labels of other slices are zeroed.
        """
        img2, lab2 = self.slice_pair(key)
        present = [c for c in np.unique(lab2) if c > 0]
        cls = present[int(rng.integers(len(present)))]
        where = np.argwhere(lab2 == cls)
        centre = where[int(rng.integers(len(where)))] + rng.integers(-self.patch // 4, self.patch // 4 + 1, 2)
        start = [int(c) - self.patch // 2 for c in centre]
        if self.dims == 2:
            size = (self.patch, self.patch)
            image = _crop(img2, [0, *start], (len(img2), *size), mode="edge")
            return image, _crop(lab2, start, size, mode="constant")
        return self.cube(key, start, keep)

    def cube(
        self, key: SliceKey, start2: Sequence[int], keep: set[SliceKey]
    ) -> tuple[np.ndarray, np.ndarray]:
        """A ``patch³`` cube centred on slice ``key``; in-plane start ``start2``; other splits' labels zeroed."""
        t, i = key
        start = list(start2)
        start.insert(self.axis, i - self.patch // 2)
        size = (self.patch,) * 3
        box = tuple(
            slice(max(s, 0), min(s + self.patch, n)) for s, n in zip(start, self.labels.shape, strict=True)
        )
        img = self.normalize(np.asarray(self.image[(t, *box)].compute(scheduler="synchronous")))
        lab = self.labels.read(t, box).copy()
        drop = [
            j - box[self.axis].start
            for j in range(box[self.axis].start, box[self.axis].stop)
            if (t, j) not in keep
        ]
        np.moveaxis(lab, self.axis, 0)[drop] = 0
        inner = [b.start - s for b, s in zip(box, start, strict=True)]
        pad = [(p, n - p - (b.stop - b.start)) for p, n, b in zip(inner, size, box, strict=True)]
        return np.pad(img, pad, mode="edge"), np.pad(lab, pad)

    def batch(
        self,
        keys: Sequence[SliceKey],
        weights: np.ndarray,
        n: int,
        rng: np.random.Generator,
        *,
        aug: dict | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patches from slices drawn with probability ``weights``: (n, C, *P) float32, (n, *P) uint8.

        C is ``2 * context + 1`` in 2D, 1 in 3D.
        """
        keep = set(keys)
        xs, ys = [], []
        for k in rng.choice(len(keys), size=n, p=weights):
            x, y = self.sample(keys[k], keep, rng)
            if aug is not None:
                x, y = augment(x, y, rng, **aug)
            xs.append(x if x.ndim > y.ndim else x[None])
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys)

    def eval_pair(self, key: SliceKey) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Image, labels and the index of the labelled slice to score.

        2D: the stack (2k + 1, A, B) of the slice and its neighbours, its labels
        (A, B), index ``k`` (the slice in the stack, axis 0). 3D: a slab of
        ``patch`` slices around it (labels of that slice only), index of the slice
        in the slab along ``axis``.
        """
        if self.dims == 2:
            img, lab = self.slice_pair(key)
            return img, lab, self.context
        t, i = key
        n = self.labels.shape[self.axis]
        lo = max(0, min(i - self.patch // 2, n - self.patch))
        box = list(self._slice_box(i))
        box[self.axis] = slice(lo, min(lo + self.patch, n))
        img = self.normalize(np.asarray(self.image[(t, *box)].compute(scheduler="synchronous")))
        _, lab2 = self.slice_pair(key)
        return img, lab2, i - lo
