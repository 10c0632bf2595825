"""Cycle-GAN: unpaired translation between raw TXM frames (domain A) and particle masks (domain B).

After the TXM-XANES registration paper, which finds isolated particles with a
Cycle-GAN (Zhu et al. 2017) trained without paired labels: two generators
(``g_ab``: frame → mask, ``g_ba``: mask → frame) and two PatchGAN discriminators
(``d_a`` judges frames, ``d_b`` masks). Generators are ResNet-style (7×7 stem,
stride-2 down-sampling, residual blocks, transposed-convolution up-sampling,
instance norm) and end with a sigmoid, as both domains are images in [0, 1]
(normalized frames, masks).

:class:`CycleGANTrainer` holds the optimizers and runs one step of the standard
objective: adversarial (least squares, "lsgan", or binary cross-entropy, "bce")
+ ``cycle_weight`` × L1 cycle consistency + ``identity_weight`` × ``cycle_weight``
× L1 identity. (The history pool of generated images of the original recipe is
left out: it only steadies long trainings.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from operando.errors import ArchitectureError, ConfigError
from operando.models.networks import check_input

__all__ = ["CycleGAN", "CycleGANTrainer", "Discriminator", "Generator"]


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """ResNet generator: Tensor of shape (B, in_channels, Y, X) → (B, out_channels, Y, X) in [0, 1].

    Y and X must be multiples of ``2 ** downsamplings``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, features: int, blocks: int, downsamplings: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, features, 7),
            nn.InstanceNorm2d(features),
            nn.ReLU(inplace=True),
        ]
        c = features
        for _ in range(downsamplings):
            layers += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
                nn.InstanceNorm2d(2 * c),
                nn.ReLU(inplace=True),
            ]
            c *= 2
        layers += [_ResBlock(c) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Discriminator(nn.Module):
    """PatchGAN discriminator: Tensor of shape (B, C, Y, X) → realness logits (B, 1, Y', X').

    ``layers`` stride-2 4×4 convolutions, then two stride-1 ones; each output
    logit judges one overlapping patch of the input.
    """

    def __init__(self, in_channels: int, *, features: int, layers: int) -> None:
        super().__init__()
        body: list[nn.Module] = [
            nn.Conv2d(in_channels, features, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        c = features
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            nxt = features * min(2**i, 8)
            body += [
                nn.Conv2d(c, nxt, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(nxt),
                nn.LeakyReLU(0.2, True),
            ]
            c = nxt
        body.append(nn.Conv2d(c, 1, 4, padding=1))
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CycleGAN(nn.Module):
    """Two generators (``g_ab``, ``g_ba``) and two discriminators (``d_a``, ``d_b``).

    Parameters
    ----------
    channels_a, channels_b : int
        Channels of domain A (raw frames) and B (masks).
    features : int
        Channels of the generators' first layer (doubled at each down-sampling).
    blocks : int
        Residual blocks at the generators' lowest resolution.
    downsamplings : int
        Stride-2 steps of the generators; image sizes must be multiples of :attr:`divisor`.
    disc_features, disc_layers : int
        Channels of the discriminators' first layer and their stride-2 layers.

    Forward translates A → B: Tensor of shape (B, channels_a, Y, X) → mask image
    (B, channels_b, Y, X) in [0, 1] (``g_ab``).
    """

    def __init__(
        self,
        *,
        channels_a: int = 1,
        channels_b: int = 1,
        features: int = 32,
        blocks: int = 6,
        downsamplings: int = 2,
        disc_features: int = 64,
        disc_layers: int = 3,
    ) -> None:
        super().__init__()
        values = {
            "channels_a": channels_a,
            "channels_b": channels_b,
            "features": features,
            "blocks": blocks,
            "downsamplings": downsamplings,
            "disc_features": disc_features,
            "disc_layers": disc_layers,
        }
        least = {"blocks": 0, "downsamplings": 0}
        for name, value in values.items():
            if int(value) != value or value < least.get(name, 1):
                raise ArchitectureError(
                    f"CycleGAN({name}=...)", f"must be an integer ≥ {least.get(name, 1)}, got {value!r}"
                )
        self._arguments = {k: int(v) for k, v in values.items()}
        gen = {"features": features, "blocks": blocks, "downsamplings": downsamplings}
        self.g_ab = Generator(channels_a, channels_b, **gen)
        self.g_ba = Generator(channels_b, channels_a, **gen)
        self.d_a = Discriminator(channels_a, features=disc_features, layers=disc_layers)
        self.d_b = Discriminator(channels_b, features=disc_features, layers=disc_layers)

    @property
    def arguments(self) -> dict[str, Any]:
        """JSON-able constructor keyword arguments: ``CycleGAN(**m.arguments)`` rebuilds it."""
        return dict(self._arguments)

    @property
    def divisor(self) -> int:
        """Image sizes must be multiples of this (2 ** downsamplings)."""
        return 2 ** self._arguments["downsamplings"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(
            x, name="CycleGAN", spatial_dims=2, channels=self._arguments["channels_a"], divisor=self.divisor
        )
        return self.g_ab(x)


class CycleGANTrainer:
    """Optimizers and training step of a :class:`CycleGAN` on unpaired batches.

    Parameters
    ----------
    model : CycleGAN
    lr : float
        Adam learning rate of generators and discriminators.
    betas : (float, float)
        Adam betas (0.5, 0.999 as in the Cycle-GAN paper).
    cycle_weight : float
        Weight of the L1 cycle-consistency loss (λ = 10).
    identity_weight : float
        Weight of the identity loss relative to ``cycle_weight`` (0.5); needs as
        many channels in A as in B unless 0.
    adversarial : {"lsgan", "bce"}
        Least-squares or binary cross-entropy adversarial loss.
    """

    def __init__(
        self,
        model: CycleGAN,
        *,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        cycle_weight: float = 10.0,
        identity_weight: float = 0.5,
        adversarial: str = "lsgan",
    ) -> None:
        if adversarial not in ("lsgan", "bce"):
            raise ConfigError(
                "CycleGANTrainer(adversarial=...)",
                f"must be 'lsgan' or 'bce', got {adversarial!r}",
                remedy="Pass adversarial='lsgan' or 'bce'.",
            )
        args = model.arguments
        if identity_weight and args["channels_a"] != args["channels_b"]:
            raise ArchitectureError(
                "CycleGANTrainer(identity_weight=...)",
                f"the identity loss needs channels_a == channels_b, got {args['channels_a']} and {args['channels_b']}",
                remedy="Pass identity_weight=0.",
            )
        self.model = model
        self.cycle_weight, self.identity_weight, self.adversarial = cycle_weight, identity_weight, adversarial
        generators = [*model.g_ab.parameters(), *model.g_ba.parameters()]
        discriminators = [*model.d_a.parameters(), *model.d_b.parameters()]
        self.opt_g = torch.optim.Adam(generators, lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(discriminators, lr=lr, betas=betas)

    def _gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if real else 0.0)
        if self.adversarial == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)

    def train_step(self, batch_a: torch.Tensor, batch_b: torch.Tensor) -> dict[str, float]:
        """One generator step then one discriminator step on unpaired batches.

        Parameters
        ----------
        batch_a : Tensor of shape (B, channels_a, Y, X)
            Raw frames in [0, 1].
        batch_b : Tensor of shape (B', channels_b, Y, X)
            Masks in [0, 1], not paired with ``batch_a``.

        Returns
        -------
        dict of str to float
            ``adv_ab``, ``adv_ba``, ``cycle``, ``identity``, ``generator`` (their
            weighted sum), ``d_a``, ``d_b``.
        """
        m = self.model
        args = m.arguments
        check_input(
            batch_a, name="CycleGAN domain A", spatial_dims=2, channels=args["channels_a"], divisor=m.divisor
        )
        check_input(
            batch_b, name="CycleGAN domain B", spatial_dims=2, channels=args["channels_b"], divisor=m.divisor
        )
        m.train()
        fake_b, fake_a = m.g_ab(batch_a), m.g_ba(batch_b)
        for p in (*m.d_a.parameters(), *m.d_b.parameters()):
            p.requires_grad_(False)  # the generator step must not move the discriminators
        adv_ab, adv_ba = self._gan(m.d_b(fake_b), True), self._gan(m.d_a(fake_a), True)
        cycle = F.l1_loss(m.g_ba(fake_b), batch_a) + F.l1_loss(m.g_ab(fake_a), batch_b)
        identity = torch.zeros((), device=batch_a.device)
        if self.identity_weight:
            identity = F.l1_loss(m.g_ab(batch_b), batch_b) + F.l1_loss(m.g_ba(batch_a), batch_a)
        generator = adv_ab + adv_ba + self.cycle_weight * (cycle + self.identity_weight * identity)
        self.opt_g.zero_grad(set_to_none=True)
        generator.backward()
        self.opt_g.step()
        for p in (*m.d_a.parameters(), *m.d_b.parameters()):
            p.requires_grad_(True)
        d_a = 0.5 * (self._gan(m.d_a(batch_a), True) + self._gan(m.d_a(fake_a.detach()), False))
        d_b = 0.5 * (self._gan(m.d_b(batch_b), True) + self._gan(m.d_b(fake_b.detach()), False))
        self.opt_d.zero_grad(set_to_none=True)
        (d_a + d_b).backward()
        self.opt_d.step()
        values = {
            "adv_ab": adv_ab,
            "adv_ba": adv_ba,
            "cycle": cycle,
            "identity": identity,
            "generator": generator,
        }
        return {k: float(v.detach()) for k, v in {**values, "d_a": d_a, "d_b": d_b}.items()}
