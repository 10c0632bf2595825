"""DualUNet and CycleGAN trained for a few steps on particle ROIs of synthetic TXM-XANES frames."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from operando.errors import ArchitectureError, ConfigError, LabelsError
from operando.models.cyclegan import CycleGAN, CycleGANTrainer
from operando.models.dual_unet import DualUNet, dual_unet_loss, dual_unet_step
from operando.synth.xanes import default_energies, frame_absorbance, make_xanes, xanes_scene

ROI, FIELD, ENERGIES = 32, 96, 8
SCALE = 1.5  # absorbance → about [0, 1]


def _rois(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy absorbance, particle-only clean absorbance and mask of every particle in every frame.

    Tensors of shape (9 particles × 8 energies, 1, ROI, ROI). No motion, so the
    truth labels (at reference positions) hold in every frame; few counts, so
    frames below the Ni edge barely show the particles.
    """
    params = {"n_particles": 9, "n_debris": 0, "jitter_px": 0.0, "walk_px": 0.0, "flat_counts": 300.0}
    shape = (1, ENERGIES, FIELD, FIELD)
    data, truth = make_xanes(shape=shape, seed=seed, **params)
    counts, flat, dark = (data[v].values[0].astype(np.float64) for v in ("counts", "flat", "dark"))
    absorbance = -np.log(np.clip(counts - dark, 1, None) / np.clip(flat - dark, 1, None))
    scene = xanes_scene(shape, seed=seed, energies=default_energies(ENERGIES), **params)
    bare = dataclasses.replace(scene, thickness_um=np.zeros_like(scene.thickness_um))
    labels = truth["labels"].values
    noisy, clean, mask = [], [], []
    for k, centre in enumerate(truth["reference_centre_px"].values):
        origin = tuple(np.clip(np.round(centre).astype(int) - ROI // 2, 0, FIELD - ROI))
        box = tuple(slice(o, o + ROI) for o in origin)
        alone = dataclasses.replace(bare, thickness_um=np.where(np.arange(9) == k, scene.thickness_um, 0.0))
        for e in range(ENERGIES):
            noisy.append(absorbance[e][box])
            particle = frame_absorbance(alone, 0, e, origin, (ROI, ROI)) - frame_absorbance(
                bare, 0, e, origin, (ROI, ROI)
            )
            clean.append(particle)
            mask.append(labels[box] == k + 1)
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)[:, None])  # noqa: E731
    return as_tensor(noisy) / SCALE, as_tensor(clean) / SCALE, as_tensor(mask)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def train_rois():
    return _rois(0)


@pytest.fixture(scope="module")
def test_rois():
    return _rois(1)


@pytest.fixture(scope="module")
def trained_dual(train_rois):
    torch.manual_seed(0)
    model = DualUNet(channels=(8, 16, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    draw = torch.Generator().manual_seed(0)
    history = []
    for _ in range(60):
        idx = torch.randint(0, len(train_rois[0]), (8,), generator=draw)
        history.append(dual_unet_step(model, optimizer, *(t[idx] for t in train_rois)))
    return model.eval(), history


def test_rois_hold_one_particle_each(train_rois):
    noisy, clean, mask = train_rois
    assert noisy.shape == clean.shape == mask.shape == (72, 1, ROI, ROI)
    assert torch.all(mask.sum(dim=(1, 2, 3)) > 50)  # a whole particle, radius ≥ 4 px
    assert torch.all(clean[mask == 0] == 0) and torch.all(clean[mask == 1] >= 0)


def test_dual_unet_losses_improve(trained_dual):
    _, history = trained_dual
    first, last = history[0], history[-10:]
    for key in ("denoise", "mask", "total"):
        assert np.mean([h[key] for h in last]) < 0.6 * first[key], key


def test_dual_unet_contour_beats_otsu_on_noisy_rois(trained_dual, test_rois):
    model, _ = trained_dual
    noisy, clean, mask = test_rois  # another phantom than the training one
    with torch.no_grad():
        denoised, logits = model(noisy)
    truth = mask[:, 0].numpy() > 0
    ours = np.mean([_iou(p > 0, t) for p, t in zip(logits[:, 0].numpy(), truth, strict=True)])
    otsu = np.mean([_iou(n > threshold_otsu(n), t) for n, t in zip(noisy[:, 0].numpy(), truth, strict=True)])
    assert ours > 0.75 and ours > otsu + 0.1, (ours, otsu)
    # The denoiser too: closer to the clean particle than the noisy input is.
    assert torch.mean((denoised - clean) ** 2) < 0.5 * torch.mean((noisy - clean) ** 2)


def test_dual_unet_outputs_and_arguments():
    torch.manual_seed(0)
    model = DualUNet(in_channels=2, channels=(4, 8, 16, 32, 64)).eval()
    assert model.divisor == 16
    # Five levels: 10 encoder + 8 decoder 3×3 convolutions per U-Net, and one 1×1 head.
    convs = [m.kernel_size for m in model.denoiser.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs.count((3, 3)) == 18 and convs.count((1, 1)) == 1
    rebuilt = DualUNet(**json.loads(json.dumps(model.arguments)))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 2, 32, 48)
    with torch.no_grad():
        (d, m), (d2, m2) = model(x), rebuilt.eval()(x)
    assert d.shape == m.shape == (3, 1, 32, 48)
    torch.testing.assert_close((d, m), (d2, m2))
    with pytest.raises(
        ArchitectureError, match=r"spatial size \(32, 40\) is not a multiple of the divisor 16"
    ):
        model(torch.zeros(1, 2, 32, 40))
    with pytest.raises(ArchitectureError, match="two or more positive channel counts"):
        DualUNet(channels=(8,))


def test_dual_unet_loss_checks_shapes_and_is_zero_when_perfect():
    model = DualUNet(channels=(2, 4)).eval()
    noisy = torch.rand(2, 1, 8, 8)
    with pytest.raises(
        LabelsError, match=r"mask: shape \(2, 1, 8, 4\) does not match the ROI batch's \(2, 1, 8, 8\)"
    ):
        dual_unet_loss(model, noisy, noisy, torch.zeros(2, 1, 8, 4))
    with torch.no_grad():
        denoised, logits = model(noisy)
    mask = (logits > 0).float()
    losses = dual_unet_loss(model, noisy, denoised, mask)
    assert losses["denoise"] == 0
    # BCE + Dice of the model's own hard decisions: small, but not 0 (soft probabilities).
    assert 0 < losses["mask"] < dual_unet_loss(model, noisy, denoised, 1 - mask)["mask"]


@pytest.fixture(scope="module")
def cyclegan_history(train_rois, test_rois):
    torch.manual_seed(0)
    model = CycleGAN(features=8, blocks=2, downsamplings=2, disc_features=8, disc_layers=2)
    trainer = CycleGANTrainer(model, lr=1e-3)
    frames = train_rois[0].clamp(0, 1)
    masks = test_rois[2]  # masks of another phantom: unpaired
    draw = torch.Generator().manual_seed(0)
    history = []
    for _ in range(40):
        a = frames[torch.randint(0, len(frames), (6,), generator=draw)]
        b = masks[torch.randint(0, len(masks), (6,), generator=draw)]
        history.append(trainer.train_step(a, b))
    return model, history


def test_cyclegan_losses_improve_without_paired_labels(cyclegan_history):
    _, history = cyclegan_history
    for key in ("cycle", "identity", "generator"):
        assert np.mean([h[key] for h in history[-10:]]) < 0.6 * np.mean([h[key] for h in history[:3]]), key
    # The discriminators learn too (LSGAN: 0.25 is a coin toss at output 0.5).
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert np.mean([h["d_b"] for h in history[-10:]]) < 0.25


def test_cyclegan_structure_and_arguments(cyclegan_history):
    model, _ = cyclegan_history
    assert {"g_ab", "g_ba", "d_a", "d_b"} <= {name for name, _ in model.named_children()}
    rebuilt = CycleGAN(**json.loads(json.dumps(model.arguments)))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        y = model.eval()(x)
        torch.testing.assert_close(y, rebuilt.eval()(x))
    assert y.shape == (2, 1, 32, 32) and 0 <= y.min() and y.max() <= 1
    assert model.d_b(y).shape == (2, 1, 6, 6)  # PatchGAN: one logit per patch
    with pytest.raises(
        ArchitectureError, match=r"spatial size \(30, 32\) is not a multiple of the divisor 4"
    ):
        model(torch.zeros(1, 1, 30, 32))


def test_cyclegan_rejects_bad_options():
    with pytest.raises(ArchitectureError, match=r"CycleGAN\(features=...\): must be an integer ≥ 1, got 0"):
        CycleGAN(features=0)
    with pytest.raises(ArchitectureError, match="identity loss needs channels_a == channels_b, got 1 and 2"):
        CycleGANTrainer(CycleGAN(channels_b=2, features=4, blocks=0))
    CycleGANTrainer(CycleGAN(channels_b=2, features=4, blocks=0), identity_weight=0)
    with pytest.raises(ConfigError, match="must be 'lsgan' or 'bce', got 'wgan'"):
        CycleGANTrainer(CycleGAN(features=4, blocks=0), adversarial="wgan")


def test_cyclegan_bce_step_trains_the_discriminators():
    torch.manual_seed(0)
    model = CycleGAN(features=4, blocks=1, downsamplings=1, disc_features=4, disc_layers=1)
    trainer = CycleGANTrainer(model, adversarial="bce", lr=5e-3)
    a, b = torch.rand(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.5).float()
    before = [p.detach().clone() for p in model.d_a.parameters()]
    losses = [trainer.train_step(a, b) for _ in range(10)]
    assert any(not torch.equal(p, q) for p, q in zip(before, model.d_a.parameters(), strict=True))
    assert losses[-1]["d_a"] < losses[0]["d_a"] and losses[0]["d_a"] == pytest.approx(np.log(2), abs=0.1)
