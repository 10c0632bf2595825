"""Intensity normalization: a percentile clip and scale, identical at training and inference.

The two percentiles are fitted once on the training data, out of core
(:func:`fit_normalization` samples voxels chunk by chunk), and stored in the
weights file's header, so that inference applies exactly the mapping the
network was trained on::

    norm = fit_normalization(dataset["intensity"].data)     # dask array, never loaded
    x01 = norm.apply(patch)                                 # float32 in [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dask
import dask.array as da
import numpy as np
import torch

from operando.errors import ConfigError

__all__ = ["Normalization", "Normalized", "fit_normalization"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _check_percentiles(where: str, percentiles: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ConfigError(where, f"expected two percentiles (low, high), got {percentiles!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(where, f"percentiles must satisfy 0 <= low < high <= 100, got ({lo}, {hi})")
    return lo, hi


@dataclass(frozen=True)
class Normalization:
    """Clip intensities to ``[low, high]`` and scale them to ``[0, 1]``.

    Attributes
    ----------
    low, high : float
        Intensities mapped to 0 and 1; finite with ``high > low``.
    percentiles : tuple of float
        The percentiles of the training data that ``low`` and ``high`` are
        (provenance only: :meth:`apply` uses ``low`` and ``high``).
    """

    low: float
    high: float
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError("normalization", f"low and high must be finite, got ({low}, {high})")
        if not high > low:
            raise ConfigError(
                "normalization",
                f"high ({high}) must exceed low ({low}): a degenerate range scales nothing",
                remedy="Fit on data whose intensities vary, or pass a wider range.",
            )
        # Frozen: set the canonical float values through object.__setattr__.
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "percentiles", _check_percentiles("normalization", self.percentiles))

    def apply(self, x: ArrayT) -> ArrayT:
        """``(x - low) / (high - low)`` clipped to ``[0, 1]``, as float32.

        Parameters
        ----------
        x : ndarray or Tensor of any shape and real dtype
            Intensities; a tensor stays on its device. NaN (no data, e.g. outside
            the field after registration) reads as the darkest value, 0: a NaN would
            otherwise spread through every convolution of its patch.

        Returns
        -------
        ndarray or Tensor of float32, the shape of ``x``
            The same type as ``x``. Computed in float32 for both types, so numpy
            (training) and torch (inference) give identical values.
        """
        low, scale = np.float32(self.low), np.float32(self.high - self.low)
        if isinstance(x, torch.Tensor):
            y = (x.to(torch.float32) - float(low)) / float(scale)
            return y.nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
        y = (np.asarray(x, dtype=np.float32) - low) / scale
        np.nan_to_num(y, copy=False, nan=0.0)
        return np.clip(y, np.float32(0.0), np.float32(1.0), out=y)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"low": float, "high": float, "percentiles": [float, float]}``."""
        return {"low": self.low, "high": self.high, "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; :class:`ConfigError` when keys are missing or values invalid."""
        if not isinstance(d, Mapping) or not {"low", "high"} <= set(d):
            raise ConfigError("normalization", f"expected a mapping with 'low' and 'high', got {d!r}")
        unknown = set(d) - {"low", "high", "percentiles"}
        if unknown:
            raise ConfigError("normalization", f"unknown keys {sorted(unknown)}")
        try:
            low, high = float(d["low"]), float(d["high"])
        except (TypeError, ValueError):
            raise ConfigError("normalization", f"low and high must be numbers, got {d!r}") from None
        percentiles = _check_percentiles("normalization", d.get("percentiles", (0.5, 99.5)))
        return cls(low, high, percentiles)


def _sample_block(block: np.ndarray, count: int, seed: tuple[int, ...]) -> np.ndarray:
    """``count`` voxels of ``block`` drawn uniformly (with replacement), or all when it has fewer."""
    flat = block.reshape(-1)
    if count >= flat.size:
        return np.array(flat, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, flat.size, size=count)
    return flat[index].astype(np.float64)


def fit_normalization(
    data: da.Array,
    *,
    percentiles: Sequence[float] = (0.5, 99.5),
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> Normalization:
    """Percentile clip-and-scale fitted on ``data``, out of core.

    Each chunk is computed on its own and contributes a number of voxels in
    proportion to its size (``max_samples`` in all); the percentiles are those
    of the sample. When ``data`` has at most ``max_samples`` voxels every voxel
    is used, so the result equals ``np.percentile`` of the whole array.

    Parameters
    ----------
    data : dask.array.Array of any shape, real dtype
        Training intensities; only one chunk per worker thread is ever in memory.
    percentiles : (float, float), keyword-only
        Low and high percentiles in ``[0, 100]``.
    max_samples : int, keyword-only
        Number of voxels sampled (approximately: at least one per chunk).
    seed : int, keyword-only
        Seed of the per-chunk sampling: the same seed gives the same result.

    Returns
    -------
    Normalization

    Raises
    ------
    ConfigError
        Bad percentiles or ``max_samples``, no finite voxel, or a constant sample
        (``high == low``).
    """
    lo, hi = _check_percentiles("percentiles", percentiles)
    if int(max_samples) < 1:
        raise ConfigError("max_samples", f"must be a positive integer, got {max_samples!r}")
    data = da.asarray(data)
    if data.size == 0:
        raise ConfigError("data", "the array is empty: nothing to fit a normalization on")
    fraction = min(1.0, int(max_samples) / data.size)
    blocks = data.to_delayed()
    samples = []
    for index in np.ndindex(*data.numblocks):
        size = math.prod(c[i] for c, i in zip(data.chunks, index, strict=True))
        count = max(1, math.ceil(fraction * size))
        samples.append(dask.delayed(_sample_block)(blocks[index], count, (seed, *index)))
    sample = np.concatenate(dask.compute(*samples))
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ConfigError("data", "no finite voxel was sampled: the array is all NaN or infinite")
    low, high = np.percentile(sample, [lo, hi])
    if not high > low:
        raise ConfigError(
            "data",
            f"the {lo} and {hi} percentiles are equal ({low}): the intensities are (almost) constant",
            remedy="Fit on data with contrast, or widen the percentiles (e.g. (0, 100)).",
        )
    return Normalization(float(low), float(high), (lo, hi))


class Normalized(torch.nn.Module):
    """``network(normalization.apply(x))``: a network that takes raw intensities.

    Parameters
    ----------
    network : torch.nn.Module
        Maps normalized ``(B, C, *S)`` float32 to its output.
    normalization : Normalization or None
        ``None`` only casts the input to float32.

    The normalization holds no tensors: the state dict is the network's, under ``network.``.
    """

    def __init__(self, network: torch.nn.Module, normalization: Normalization | None) -> None:
        super().__init__()
        self.network = network
        self.normalization = normalization

    def forward(self, x: torch.Tensor) -> Any:
        """Tensor of shape (B, C, *S), raw intensities → the network's output."""
        if self.normalization is None:
            return self.network(x.to(torch.float32))
        return self.network(self.normalization.apply(x))
