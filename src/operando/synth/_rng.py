"""Counter-based random numbers keyed by global voxel index.

A phantom must not depend on how it is chunked, so per-voxel noise cannot come
from a stateful generator walked block by block. Instead every voxel's random
number is a hash (SplitMix64's finaliser) of ``(stream key, global linear
index)``: any block computes exactly the numbers of its own voxels, in any order,
on any worker. Global parameters (particle positions, rigid motions, ...) are few
and drawn up front from :func:`numpy.random.default_rng` seeded by
``(seed, stream)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["global_index", "normal", "poisson", "stream_key", "uniform"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def stream_key(seed: int, *stream: int) -> np.uint64:
    """A 64-bit key for the random stream ``stream`` of phantom ``seed``."""
    return np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0]


def _mix(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser: a bijection on uint64 with full avalanche.
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def global_index(origin: Sequence[int], shape: Sequence[int], full_shape: Sequence[int]) -> np.ndarray:
    """Row-major linear indices (uint64) of the block at ``origin`` of ``shape`` in ``full_shape``.

    Returns
    -------
    numpy.ndarray of shape ``shape``
    """
    index = np.zeros((1,) * len(shape), dtype=np.uint64)
    for axis, (o, n, full) in enumerate(zip(origin, shape, full_shape, strict=True)):
        along = np.arange(o, o + n, dtype=np.uint64).reshape(
            [-1 if i == axis else 1 for i in range(len(shape))]
        )
        index = index * np.uint64(full) + along
    return index


def _bits(key: np.uint64, index: np.ndarray) -> np.ndarray:
    # SplitMix64's output for counter ``index`` of the stream starting at ``key``.
    return _mix(index * _GOLDEN + key)


def uniform(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """Uniform float64 in the open interval (0, 1), one per entry of ``index``."""
    return ((_bits(key, index) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normal(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """Standard normal float64 per entry of ``index``.

    Box-Muller on the two 32-bit halves of one hash: one hash per value, with
    tails cut at 6.7 σ (plenty for detector noise).
    """
    bits = _bits(key, index)
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = ((bits & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def poisson(key: np.uint64, index: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Poisson counts of ``mean`` (float64, integral values), one per voxel.

    Uses the normal approximation ``round(λ + √λ·z)``, which matches the Poisson
    mean and variance and is indistinguishable from it at the λ ≳ 50 counts of the
    synthetic detectors; exact samplers consume a variable number of uniforms per
    draw and would break the one-hash-per-voxel rule.
    """
    lam = np.maximum(mean, 0.0)
    return np.maximum(np.floor(lam + np.sqrt(lam) * normal(key, index) + 0.5), 0.0)
