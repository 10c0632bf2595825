"""Dual U-Net: denoise a single-particle ROI, then outline the particle.

After the TXM-XANES registration paper (its "Dual U-Net", after Su et al. 2022):
two U-Nets of the same structure in sequence. The first maps a noisy region of
interest around one particle to a denoised image with the background removed;
the second maps that image to the logits of the particle's mask, whose contour
and centre of mass drive the alignment.

Each U-Net has ``len(channels)`` levels (default five: four stride-2 down-sampling
steps by 2×2 max pooling and four ×2 up-sampling steps by bilinear interpolation);
every level holds two 3×3 convolution → batch norm → ReLU layers (18 feature
convolutions with five levels, as in the paper) and a final 1×1 convolution (the
per-pixel "fully connected" layer) gives one output channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from operando.errors import ArchitectureError, LabelsError
from operando.models.networks import check_input

__all__ = ["DualUNet", "PlainUNet", "dual_unet_loss", "dual_unet_step"]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (in_channels, out_channels):
        layers += [
            nn.Conv2d(c, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class PlainUNet(nn.Module):
    """2D U-Net: max-pool down, bilinear up, two 3×3 conv → BN → ReLU per level, 1×1 head.

    Parameters
    ----------
    in_channels, out_channels : int
    channels : sequence of int
        Channels per level, full resolution first (at least two levels).

    Forward maps Tensor of shape (B, in_channels, Y, X) to (B, out_channels, Y, X);
    Y and X must be multiples of ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.encoder = nn.ModuleList(_double_conv(widths[i], widths[i + 1]) for i in range(len(channels)))
        levels = range(len(channels) - 2, -1, -1)
        self.decoder = nn.ModuleList(_double_conv(channels[i + 1] + channels[i], channels[i]) for i in levels)
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for level in self.decoder:
            up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = level(torch.cat([up, skips.pop()], dim=1))
        return self.head(x)


class DualUNet(nn.Module):
    """Two U-Nets in sequence: denoiser then particle-mask segmenter.

    Parameters
    ----------
    in_channels : int
        Channels of the ROI (1 for an absorbance or transmission image).
    channels : sequence of int
        Channels per level of both U-Nets (default five levels: four down-samplings).

    Forward maps an ROI Tensor of shape (B, in_channels, Y, X) to ``(denoised,
    mask_logits)``, both Tensors of shape (B, 1, Y, X); Y and X must be multiples
    of :attr:`divisor`.
    """

    def __init__(self, *, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if in_channels < 1 or len(channels) < 2 or min(channels) < 1:
            raise ArchitectureError(
                "DualUNet(in_channels=..., channels=...)",
                f"needs in_channels ≥ 1 and two or more positive channel counts, got {in_channels}, {channels}",
            )
        self._arguments = {"in_channels": int(in_channels), "channels": list(channels)}
        self.denoiser = PlainUNet(in_channels, 1, channels)
        self.segmenter = PlainUNet(1, 1, channels)

    @property
    def arguments(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``DualUNet(**m.arguments)`` rebuilds it."""
        return {"in_channels": self._arguments["in_channels"], "channels": list(self._arguments["channels"])}

    @property
    def divisor(self) -> int:
        """ROI sizes must be multiples of this (2 ** (levels - 1))."""
        return 2 ** (len(self._arguments["channels"]) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(
            x, name="DualUNet", spatial_dims=2, channels=self._arguments["in_channels"], divisor=self.divisor
        )
        denoised = self.denoiser(x)
        return denoised, self.segmenter(denoised)


def _dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * mask).sum(dim=(1, 2, 3))
    total = p.sum(dim=(1, 2, 3)) + mask.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def dual_unet_loss(
    model: DualUNet,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    *,
    mask_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Losses of one batch: MSE of the denoised image, BCE + Dice of the mask.

    Parameters
    ----------
    model : DualUNet
    noisy : Tensor of shape (B, C, Y, X)
        Network input (normalized ROIs).
    clean : Tensor of shape (B, 1, Y, X)
        Target of the denoiser: the particle alone, noise and background removed.
    mask : Tensor of shape (B, 1, Y, X)
        Target particle mask, 0 or 1.
    mask_weight : float
        Weight of the mask loss in ``"total"``.

    Returns
    -------
    dict of str to scalar Tensor
        ``"denoise"``, ``"mask"`` and their weighted sum ``"total"`` (differentiable).
    """
    target = (noisy.shape[0], 1, *noisy.shape[2:])
    for name, t in (("clean", clean), ("mask", mask)):
        if tuple(t.shape) != target:
            raise LabelsError(name, f"shape {tuple(t.shape)} does not match the ROI batch's {target}")
    denoised, logits = model(noisy)
    mask = mask.to(logits.dtype)
    denoise = F.mse_loss(denoised, clean)
    segment = F.binary_cross_entropy_with_logits(logits, mask) + _dice_loss(logits, mask)
    return {"denoise": denoise, "mask": segment, "total": denoise + mask_weight * segment}


def dual_unet_step(
    model: DualUNet,
    optimizer: torch.optim.Optimizer,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    *,
    mask_weight: float = 1.0,
) -> dict[str, float]:
    """One training step (forward, backward, optimizer step); returns the losses as floats."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses = dual_unet_loss(model, noisy, clean, mask, mask_weight=mask_weight)
    losses["total"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
