"""Test-time augmentation: a network averaged over the flips of its input patch.

A network trained with random flips is nearly, not exactly, flip-equivariant:
a trained model can place class boundaries a fraction of a voxel off along some
axis, in a direction that differs between models. Averaging its class
probabilities over the flips of the patch cancels that part. On the synthetic
cell (``benchmarks/results/ct_accuracy.md``) it raised every class IoU a little
and brought the thin redeposited Li layer's volume error from −7.9 to −5.0 % and
from −5.8 to −4.9 % for two models, not for a third whose error had another
cause (−12.3 → −12.8 %). It costs one network pass per flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

__all__ = ["FlipAveraged", "flip_sets"]


def flip_sets(spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """Every non-empty set of the last ``spatial_dims`` tensor dims: 3 in 2D, 7 in 3D.

    Parameters
    ----------
    spatial_dims : {2, 3}
        Spatial dimensions of the network's patches ``(B, C, *S)``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    dims = tuple(range(-spatial_dims, 0))
    return tuple(c for n in range(1, spatial_dims + 1) for c in combinations(dims, n))


class FlipAveraged(torch.nn.Module):
    """``log`` of ``model``'s softmax averaged over the patch and its flips.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, C, *S)`` to logits ``(B, K, *S)``, its spatial dims last.
    flips : sequence of tuple of int
        Spatial dims (negative) flipped together in each extra pass, e.g.
        :func:`flip_sets`. The output is log-probabilities: valid logits for
        blending, whose softmax is the averaged probabilities.

    The state dict is ``model``'s, under ``model.``.
    """

    def __init__(self, model: torch.nn.Module, flips: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.model = model
        self.flips = tuple(tuple(int(d) for d in f) for f in flips)
        bad = [f for f in self.flips if not f or any(d >= 0 for d in f)]
        if bad:
            raise ValueError(f"flips must be non-empty sets of negative (spatial) dims, got {bad}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor of shape (B, C, *S) → log of the averaged probabilities, (B, K, *S)."""
        total = torch.softmax(self.model(x).float(), dim=1)
        for dims in self.flips:
            total += torch.softmax(self.model(torch.flip(x, dims)).float(), dim=1).flip(dims)
        # floored: a log of 0 would turn into NaN where a blend weighs it by 0
        return torch.log((total / (len(self.flips) + 1)).clamp_min(1e-30))
