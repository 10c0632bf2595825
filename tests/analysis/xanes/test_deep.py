"""The deep route: particle masks from a saved DualUNet/CycleGAN, and the pipeline's ``--model``."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from operando.analysis.xanes.deep import mask_centres, roi_masks
from operando.cli import main
from operando.errors import ArchitectureError, ConfigError, ShapeMismatchError
from operando.io.store import open_dataset
from operando.io.xanes import lazy_absorbance
from operando.models.cyclegan import CycleGAN
from operando.models.dual_unet import DualUNet, dual_unet_step
from operando.models.networks import ResidualUNet
from operando.models.normalization import Normalization
from operando.models.weights import save_model
from operando.synth.xanes import make_xanes, synth_xanes

SHAPE = (2, 21, 96, 96)
PHANTOM = {"n_particles": 4, "n_debris": 1}
LOCAL = ["--quiet", "--jobs", "1", "--cores", "2"]
ROI = 32
STEPS = 80
NORM = Normalization(0.0, 1.5)


def _threshold_oracle(threshold: float) -> DualUNet:
    """A DualUNet whose logits are its normalized input minus ``threshold``: masks are ``x > threshold``.

    Every weight is 0 but identity taps that carry channel 0 of the full-resolution
    level through both U-Nets (encoder → skip → decoder → 1×1 head); eval-mode
    batch norm with mean 0 and variance 1 is an identity (up to 1/√(1 + 1e-5))
    and ReLU keeps the non-negative normalized input.
    """
    model = DualUNet(channels=(2, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        for unet, bias in ((model.denoiser, 0.0), (model.segmenter, -threshold)):
            for conv, source in ((unet.encoder[0][0], 0), (unet.encoder[0][3], 0)):
                conv.weight[0, source, 1, 1] = 1.0
            unet.decoder[0][0].weight[0, 2, 1, 1] = 1.0  # the skip's channel 0, after the 2 upsampled ones
            unet.decoder[0][3].weight[0, 0, 1, 1] = 1.0
            unet.head.weight[0, 0, 0, 0] = 1.0
            unet.head.bias.fill_(bias)
    return model


@pytest.fixture(scope="module")
def oracle_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "oracle.safetensors"
    return save_model(path, _threshold_oracle(0.5), classes=["particle"], normalization=Normalization(0, 2))


def test_roi_masks_of_a_threshold_oracle_are_the_threshold(oracle_path):
    rng = np.random.default_rng(0)
    rois = rng.uniform(0, 2, size=(3, 5, 13, 10))  # odd sizes: padded to the divisor and cropped
    rois[np.abs(rois - 1) < 0.01] = 0.5  # keep clear of the threshold (batch norm's ε scales by ~1e-5)
    rois[1, 2] = np.nan  # no data
    masks = roi_masks(da.from_array(rois, chunks=(2, 2, -1, -1)), oracle_path, batch_size=3)
    assert isinstance(masks, da.Array) and masks.dtype == bool and masks.chunks[:2] == ((2, 1), (2, 2, 1))
    with dask.config.set(scheduler="threads"):
        got = masks.compute()
    expected = rois > 1  # normalized x / 2 > 0.5
    expected[1, 2] = False
    np.testing.assert_array_equal(got, expected)


def test_roi_masks_keeps_the_largest_region_and_centres_are_its_moments(oracle_path):
    rois = np.zeros((1, 2, 16, 16))
    rois[0, :, 2:9, 3:8] = 1.8  # the particle, 7 × 5
    rois[0, :, 12:14, 12:14] = 1.8  # a neighbour's corner, 2 × 2
    rois[0, 1] = np.roll(rois[0, 1], (1, 2), axis=(0, 1))
    masks = roi_masks(rois, oracle_path, largest_component=True).compute()
    assert masks.sum(axis=(2, 3)).tolist() == [[35, 35]]
    centres = mask_centres(masks)
    np.testing.assert_allclose(centres[0], [[5.0, 5.0], [6.0, 7.0]])
    weighted = mask_centres(masks, weights=rois * np.arange(16))  # heavier to the right
    assert np.all(weighted[0, :, 1] > centres[0, :, 1])
    assert np.isnan(mask_centres(np.zeros((1, 1, 4, 4), bool))).all()
    with pytest.raises(ShapeMismatchError, match=r"shape \(2, 16, 16\) is not \(P, F, h, w\)"):
        roi_masks(rois[0], oracle_path)


def test_a_cyclegan_generator_gives_masks_of_the_roi_shape(tmp_path):
    torch.manual_seed(0)
    net = CycleGAN(features=2, blocks=0, downsamplings=1, disc_features=2, disc_layers=1)
    path = save_model(tmp_path / "gan.safetensors", net, classes=["particle"])
    masks = roi_masks(np.random.default_rng(0).random((2, 3, 9, 12)), path)
    assert masks.shape == (2, 3, 9, 12) and masks.dtype == bool
    assert masks.compute().shape == (2, 3, 9, 12)


def test_a_ct_network_is_refused_naming_the_file(tmp_path, capsys):
    ct = ResidualUNet(spatial_dims=3, out_channels=3, channels=(2, 4))
    path = save_model(tmp_path / "ct.safetensors", ct, classes=["a", "b", "c"])
    with pytest.raises(
        ArchitectureError, match=r"ct\.safetensors: holds a ResidualUNet, not a particle-mask"
    ):
        roi_masks(np.zeros((1, 1, 8, 8)), path)
    stack = synth_xanes(tmp_path / "s.zarr", shape=(1, 21, 48, 48), seed=0, n_particles=1, n_debris=0)
    assert main(["xanes", "run", str(stack), "-o", str(tmp_path / "o"), "--model", str(path), *LOCAL]) == 2
    assert f"{path}: holds a ResidualUNet" in capsys.readouterr().err
    assert not (tmp_path / "o" / "result.zarr").exists()


# ----------------------------------------------------------------------------- pipeline


def _training_rois(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy ROIs, particle-only targets and masks (N, 1, ROI, ROI) of a still phantom.

    Without motion the truth labels hold in every frame. Each ROI is cut off the
    particle's centre by up to 4 px, as the pipeline's fixed ROIs are once it
    moves, and shifted by a random background absorbance: it drifts between scans.
    """
    data, truth = make_xanes(shape=SHAPE, seed=seed, jitter_px=0.0, walk_px=0.0, **PHANTOM)
    absorbance = lazy_absorbance(data.counts.data, data.flat.data, data.dark.data).compute()
    labels = truth.labels.values
    draw = np.random.default_rng(seed)
    noisy, mask = [], []
    for k in np.flatnonzero(~truth.is_debris.values):
        centre = truth.reference_centre_px.values[k]
        for frame in absorbance.reshape(-1, *SHAPE[2:]):
            origin = np.round(centre + draw.integers(-4, 5, 2)).astype(int) - ROI // 2
            box = tuple(slice(o, o + ROI) for o in np.clip(origin, 0, SHAPE[2] - ROI))
            noisy.append(NORM.apply(frame[box] + draw.uniform(-0.05, 0.3)))
            mask.append(labels[box] == k + 1)
    noisy_t = torch.from_numpy(np.asarray(noisy, dtype=np.float32)[:, None])
    mask_t = torch.from_numpy(np.asarray(mask, dtype=np.float32)[:, None])
    return noisy_t, noisy_t * mask_t, mask_t


def _recalibrate_batch_norm(model: DualUNet, noisy: torch.Tensor) -> None:
    """Batch-norm statistics averaged over all ROIs with the final weights (few steps leave them stale)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for batch in noisy.split(32):
            model(batch)


@pytest.fixture(scope="module")
def trained_path(tmp_path_factory):
    torch.manual_seed(0)
    model = DualUNet(channels=(4, 8, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rois = _training_rois(1)
    draw = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx = torch.randint(0, len(rois[0]), (8,), generator=draw)
        dual_unet_step(model, optimizer, *(t[idx] for t in rois))
    _recalibrate_batch_norm(model, rois[0])
    path = tmp_path_factory.mktemp("model") / "dual.safetensors"
    return save_model(
        path, model.eval(), classes=["particle"], normalization=NORM, provenance={"steps": STEPS}
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_path):
    root = tmp_path_factory.mktemp("xanes_deep")
    stack = synth_xanes(root / "stack.zarr", shape=SHAPE, seed=0, **PHANTOM)
    args = ["xanes", "run", str(stack), *LOCAL]
    assert main([*args, "-o", str(root / "deep"), "--model", str(trained_path)]) == 0
    assert main([*args, "-o", str(root / "com")]) == 0
    truth = open_dataset(stack, group="truth").compute()
    return root, truth


def test_pipeline_with_a_model_writes_every_output_and_records_the_model(runs, trained_path):
    root, _ = runs
    for name in ("tracks.csv", "edge.csv", "overlay.png", "edge_maps.png"):
        assert (root / "deep" / name).stat().st_size > 0
    result = open_dataset(root / "deep" / "result.zarr")
    assert result.attrs["model"] == str(trained_path.resolve())
    header = result.attrs["model_header"]
    assert header["architecture"] == "DualUNet" and header["provenance"] == {"steps": STEPS}
    assert header["normalization"]["high"] == 1.5
    assert "model" not in open_dataset(root / "com" / "result.zarr").attrs


def test_model_masks_differ_from_threshold_masks_and_outline_the_particles(runs):
    root, truth = runs
    deep, com = (open_dataset(root / d / "result.zarr") for d in ("deep", "com"))
    np.testing.assert_array_equal(deep.centroid_px, com.centroid_px)  # same detection
    ours, theirs = deep["mask"].values, com["mask"].values
    assert ours.shape == theirs.shape and not np.array_equal(ours, theirs)
    true_area = [(truth.labels.values == k + 1).sum() for k in _match(deep, truth)]
    # A coarse 60-step model: the outline's area within a third of the truth's.
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), true_area, rtol=0.33)


def test_model_tracks_are_finite_and_follow_the_particles(runs):
    root, truth = runs
    tracks = pd.read_csv(root / "deep" / "tracks.csv").sort_values(["particle", "scan", "energy_index"])
    assert np.isfinite(tracks[["y", "x"]].to_numpy()).all()
    match = _match(open_dataset(root / "deep" / "result.zarr"), truth)
    measured = tracks[["dy", "dx"]].to_numpy().reshape(len(match), -1, 2)
    true = truth.centre_px.values.reshape(measured.shape[1], -1, 2)[:, match].transpose(1, 0, 2)
    rms = np.sqrt(np.mean((measured - (true - true[:, :1])) ** 2))
    still = np.sqrt(np.mean((true - true[:, :1]) ** 2))
    # An 80-step model is coarse (0.98 px against 1.32 px standing still, measured):
    # it must follow the motion, not be sub-pixel as a trained one is.
    assert rms < 0.9 * still, (rms, still)
    com = pd.read_csv(root / "com" / "tracks.csv").sort_values(["particle", "scan", "energy_index"])
    assert not np.allclose(tracks[["y", "x"]], com[["y", "x"]])  # the positions are the model's


def test_a_model_goes_only_with_the_com_method(tmp_path, trained_path):
    from operando.analysis.xanes.pipeline import run_xanes

    with pytest.raises(ConfigError, match="cannot go with method 'phase'"):
        run_xanes(tmp_path / "missing.zarr", tmp_path / "out", method="phase", model=trained_path)


def _match(result, truth) -> list[int]:
    """Truth object nearest each detected particle."""
    ref = truth.reference_centre_px.values
    return [int(np.argmin(np.hypot(*(ref - c).T))) for c in result.centroid_px.values]


def test_the_oracle_is_what_it_claims():
    # The oracle's premise, checked on the network itself: logits = normalized input − 0.5.
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        _, logits = _threshold_oracle(0.5)(x)
    torch.testing.assert_close(logits, x - 0.5, atol=1e-4, rtol=0)
    assert ndimage.label((x[0, 0] > 0.5).numpy())[1] >= 1
