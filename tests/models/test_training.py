"""Training on sparse labels: the ignore label, splits, patches, and a real run on synthetic CT."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

from operando.engine.patches import predict_array
from operando.errors import ArchitectureError, ConfigError, LabelsError, TrainingDataError
from operando.io import open_dataset
from operando.models.drafts import predict_drafts
from operando.models.labels import SparseLabels, open_label_tiffs
from operando.models.metrics import SegmentationMetrics
from operando.models.networks import ResidualUNet
from operando.models.normalization import Normalized
from operando.models.sampling import PatchSource, augment, split_slices
from operando.models.training import (
    TrainingConfig,
    class_boundaries,
    masked_cross_entropy,
    masked_dice_loss,
    save_result,
    train,
)
from operando.models.weights import read_header, save_model
from operando.synth import synth_ct
from operando.synth.ct import CT_CLASSES

# The paper's five classes from sparse 2D labels: every 4th x cross-section.
CLASSES = CT_CLASSES
LABELLED_X = tuple(range(1, 64, 4))
CELL = (2, 128, 64, 64)


# --------------------------------------------------------------------------- loss


def _labels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lab = rng.integers(1, 4, shape)
    lab[rng.random(shape) < 0.7] = 0
    return torch.from_numpy(lab)


def test_unlabelled_logits_change_neither_loss_nor_gradient():
    labels = _labels((2, 8, 8), 0)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = masked_cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    unlabelled = (labels == 0)[:, None].expand_as(logits)
    assert torch.all(grad[unlabelled] == 0)
    assert torch.any(grad[~unlabelled] != 0)
    moved = (logits.detach() + 50 * torch.randn_like(logits) * unlabelled).requires_grad_(True)
    loss2 = masked_cross_entropy(moved, labels)
    (grad2,) = torch.autograd.grad(loss2, moved)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(grad2, grad, rtol=0, atol=1e-15)


def test_loss_equals_plain_cross_entropy_over_labelled_pixels_only():
    """The network's parameter gradient is the one of the labelled pixels alone."""
    torch.manual_seed(0)
    net = ResidualUNet.preset("small", spatial_dims=2, out_channels=3).eval()
    x, labels = torch.rand(2, 1, 16, 16), _labels((2, 16, 16), 1)
    logits = net(x)
    keep = labels > 0
    reference = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep] - 1)
    loss = masked_cross_entropy(logits, labels)
    torch.testing.assert_close(loss, reference)
    g_loss = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    g_ref = torch.autograd.grad(reference, list(net.parameters()))
    for a, b in zip(g_loss, g_ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss_fn", [masked_cross_entropy, masked_dice_loss])
def test_unlabelled_pixels_get_no_gradient_from_either_loss(loss_fn):
    labels = _labels((2, 8, 8), 2)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_fn(logits, labels), logits)
    unlabelled = (labels == 0)[:, None].expand_as(logits)
    assert torch.all(grad[unlabelled] == 0) and torch.any(grad[~unlabelled] != 0)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_weighs_classes_alike():
    labels = torch.ones(1, 16, 16, dtype=torch.long)
    labels[0, :2, :2] = 2  # a rare class: 4 of 256 pixels
    perfect = 40.0 * torch.nn.functional.one_hot(labels - 1, 2).movedim(-1, 1).double()
    assert masked_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    missed = perfect.clone()
    missed[0, :, :2, :2] = perfect[0, :, 2:4, 2:4]  # the rare class called common
    # 4 wrong pixels of 256: the rare class's Dice drops to ~0.2, so the loss to ~0.4
    assert masked_dice_loss(missed, labels).item() > 0.35
    assert masked_cross_entropy(missed, labels).item() < 0.7


def test_a_batch_without_labels_gives_zero_loss_and_gradient_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and torch.all(grad == 0)


def test_class_boundaries_are_the_voxels_beside_another_labelled_class():
    labels = torch.zeros(1, 6, 7, dtype=torch.long)
    labels[0, :, :3] = 1
    labels[0, :, 3:6] = 2  # column 6 unlabelled: no boundary beside it
    got = class_boundaries(labels)[0]
    want = torch.zeros(6, 7, dtype=torch.bool)
    want[:, 2:4] = True
    assert torch.equal(got, want)
    cube = torch.ones(1, 5, 5, 5, dtype=torch.long)
    cube[0, 2, 2, 2] = 3
    assert int(class_boundaries(cube).sum()) == 27  # the odd voxel and its 26 neighbours


def test_boundary_weight_is_a_weighted_mean_that_zero_turns_off():
    labels = _labels((2, 8, 8), 3)
    logits = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plain = masked_cross_entropy(logits, labels)
    assert masked_cross_entropy(logits, labels, boundary_weight=0.0).item() == plain.item()
    per_voxel = torch.nn.functional.cross_entropy(logits, labels - 1, ignore_index=-1, reduction="none")
    w = (1 + 3 * class_boundaries(labels).double()) * (labels > 0)
    want = (per_voxel * w).sum() / w.sum()
    torch.testing.assert_close(masked_cross_entropy(logits, labels, boundary_weight=3.0), want)


# --------------------------------------------------------------------------- sampling


def test_split_is_by_slice_disjoint_deterministic_and_complete():
    keys = [(t, i) for t in range(2) for i in range(10)]
    a = split_slices(keys, seed=3)
    assert a == split_slices(list(reversed(keys)), seed=3)
    assert (len(a.train), len(a.validation), len(a.test)) == (14, 3, 3)
    assert sorted(a.train + a.validation + a.test) == keys
    assert split_slices(keys, seed=4) != a
    small = split_slices([(0, 0), (0, 5), (1, 2)], seed=0)
    assert len(small.train) == len(small.validation) == len(small.test) == 1
    with pytest.raises(TrainingDataError, match="2 labelled slice"):
        split_slices([(0, 0), (0, 1)])


def test_augmentation_moves_labels_with_the_image():
    rng = np.random.default_rng(0)
    x = rng.random((8, 8)).astype(np.float32)
    y = (x > 0.5).astype(np.uint8) + 1
    seen = set()
    for _ in range(30):
        xa, ya = augment(x, y, rng, rotate=True, jitter=0.0)
        np.testing.assert_array_equal(ya, (xa > 0.5) + 1)
        seen.add(xa.tobytes())
    assert len(seen) > 4  # flips and rotations really happen
    xj, _ = augment(x, y, np.random.default_rng(1), rotate=False, jitter=0.2)
    assert not np.allclose(np.sort(xj.ravel()), np.sort(x.ravel()))


class _Memory:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def read(self, box):
        return self.a[box]


def test_cubes_keep_only_their_split_labels_and_patches_centre_on_labels():
    rng = np.random.default_rng(0)
    lab = rng.integers(1, 3, (1, 8, 8, 8)).astype(np.uint8)
    image = da.from_array(rng.random((1, 8, 8, 8)).astype(np.float32), chunks=(1, 4, 4, 4))
    labels = SparseLabels({0: _Memory(lab[0])}, (8, 8, 8), 2)
    src = PatchSource(image, labels, axis=2, spatial_dims=3, patch=4, normalize=lambda a: a)
    x, y = src.cube((0, 4), (2, 2), keep={(0, 4), (0, 5)})
    assert x.shape == y.shape == (4, 4, 4)
    np.testing.assert_array_equal(x, image[0, 2:6, 2:6, 2:6].compute())
    np.testing.assert_array_equal(y[:, :, 2:4], lab[0, 2:6, 2:6, 4:6])
    assert not y[:, :, :2].any()  # slices 2 and 3 belong to another split
    flat = SparseLabels({0: _Memory(np.pad(lab[0, :, :, :1], ((0, 0), (0, 0), (0, 7))))}, (8, 8, 8), 2)
    src2 = PatchSource(image, flat, axis=2, spatial_dims=2, patch=4, normalize=lambda a: a)
    for _ in range(5):
        _, y2 = src2.sample((0, 0), {(0, 0)}, rng)
        assert y2.shape == (4, 4) and y2.any()


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> tuple[Path, np.ndarray, list[Path]]:
    """Synthetic CT near full charge (no misalignment, so the truth fits every timestep) and sparse labels.

    The cell is 128 voxels thick so that dendrites are 2-4 voxels wide at the root,
    with 16 of them on 64 × 64 voxels (the default density gives three).
    """
    root = tmp_path_factory.mktemp("train")
    path = synth_ct(
        root / "cell.zarr",
        shape=CELL,
        seed=1,
        times_min=[100.0, 120.0],
        charge_end_min=120.0,
        n_pits=16,
        n_dendrites=16,
        max_angle_deg=0.0,
        max_shift_voxels=0.0,
    )
    truth = open_dataset(path, group="truth").labels.values + 1
    files = []
    for t in range(2):
        sparse = np.zeros_like(truth[t])
        sparse[:, :, LABELLED_X] = truth[t][:, :, LABELLED_X]
        files.append(root / f"labels_t{t}.tif")
        tifffile.imwrite(files[-1], sparse, photometric="minisblack")
    return path, truth, files


def _image_and_labels(cell) -> tuple[da.Array, SparseLabels]:
    path, _, files = cell
    image = open_dataset(path).intensity.data
    return image, open_label_tiffs(files, image_shape=image.shape, n_classes=5)


@pytest.fixture(scope="module")
def trained(cell):
    image, labels = _image_and_labels(cell)
    # A budget of rounds (the learning rate anneals over it): the same schedule on a
    # slower or busier machine. 64 rounds take under 3 minutes on 2 CPU cores; the
    # wall-clock limit is only a guard, as the IoU is asserted, not the time.
    config = TrainingConfig(
        classes=CLASSES,
        axis=2,
        context=3,
        patch=32,
        steps_per_round=60,
        max_rounds=64,
        patience=64,
        time_limit_s=600,
        device="cpu",
    )
    lines: list[str] = []
    return train(image, labels, config, progress=lines.append), lines


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_small_preset_segments_five_classes_on_held_out_slices(cell, trained):
    """Issue 4: mean IoU >= 0.90 on held-out slices, small preset, CPU, under 3 minutes."""
    path, truth, _ = cell
    result, lines = trained
    image = open_dataset(path).intensity.values
    total = SegmentationMetrics(CLASSES, np.zeros((5, 5), np.int64))
    held_out = [x for x in range(64) if x not in LABELLED_X]
    for t in range(2):
        # 2D patches of (z, y) cross-sections, each with its 3 neighbours per side along x
        volume = result.normalization.apply(image[t])
        labels = predict_array(volume, result.network, patch=32, axes=(0, 1), context=3).argmax(0)
        total = total + SegmentationMetrics.from_arrays(
            labels[:, :, held_out], truth[t][:, :, held_out], classes=CLASSES
        )
    iou = total.iou
    print(total.table(), f"{len(lines)} rounds")
    # Issue 4 asks 0.90. Context 3, 68-80 rounds in 170 s on 2 idle CPU cores: 0.926-0.933 over
    # two seeds and runs; context 2 cut to 45 rounds by time still gave 0.907.
    assert total.mean_iou >= 0.90, total.table()
    assert min(iou["background"], iou["electrode"], iou["pit"]) >= 0.93, total.table()
    # the paper: deposited 0.79, dendrite 0.69; dendrites are ~1000 held-out voxels
    # of 0.01 contrast to deposited Li, so their IoU varies most between runs
    assert iou["deposited"] >= 0.79 and iou["dendrite"] >= 0.5, total.table()  # CI run: .882, .651
    assert lines and lines[0].startswith("round 1: loss") and "validation mean IoU" in lines[0]
    assert result.test.accuracy >= 0.95, result.test.table()  # the few test slices of the split


@pytest.mark.slow
def test_saved_result_carries_metrics_and_curve_and_init_checks(cell, trained, tmp_path: Path):
    path, _, files = cell
    result, _ = trained
    weights, curve = save_result(result, tmp_path / "model.safetensors", provenance={"image": str(path)})
    assert curve == tmp_path / "model.curve.png" and curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = read_header(weights)
    assert header.classes == CLASSES and header.normalization == result.normalization
    prov = header.provenance
    assert prov["test"]["mean_iou"] == pytest.approx(result.test.mean_iou, abs=1e-6)
    assert prov["training"]["rounds"] == len(result.history)
    assert sum(prov["training"]["label_voxels"].values()) == 2 * 128 * 64 * len(LABELLED_X)
    image = open_dataset(path).intensity.data
    labels = open_label_tiffs(files, image_shape=image.shape, n_classes=5)
    resumed = train(
        image,
        labels,
        TrainingConfig(
            classes=CLASSES,
            context=3,
            patch=32,
            steps_per_round=2,
            max_rounds=1,
            learning_rate=1e-4,  # Adam's first steps move every weight by ~lr whatever the gradient
            init=weights,
            device="cpu",
        ),
    )
    # one round of 2 small steps from the trained weights stays close to them (random: ~0.5)
    assert resumed.normalization == result.normalization
    assert resumed.test.accuracy >= result.test.accuracy - 0.05
    with pytest.raises(
        LabelsError, match="classes background,electrode,deposited,dendrite,pit differ from --classes"
    ):
        train(image, labels, TrainingConfig(classes=tuple("abcde"), init=weights, device="cpu"))
    with pytest.raises(ArchitectureError, match="the model is 2D but training asks for 3D"):
        train(image, labels, TrainingConfig(classes=CLASSES, spatial_dims=3, init=weights, device="cpu"))


def test_bad_training_inputs_are_refused(tmp_path: Path):
    image = da.zeros((1, 4, 8, 8), np.float32, chunks=(1, 4, 8, 8))
    empty = np.zeros((4, 8, 8), np.uint8)
    tifffile.imwrite(tmp_path / "e_t0.tif", empty, photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "e_t0.tif"], image_shape=image.shape, n_classes=2)
    with pytest.raises(TrainingDataError, match="no voxel is labelled"):
        train(image, labels, TrainingConfig(classes=("a", "b"), device="cpu"))
    with pytest.raises(LabelsError, match="3 names for labels with 2 classes"):
        train(image, labels, TrainingConfig(classes=("a", "b", "c"), device="cpu"))
    some = empty.copy()
    some[:, :, :4] = 1
    tifffile.imwrite(tmp_path / "s_t0.tif", some, photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "s_t0.tif"], image_shape=image.shape, n_classes=2)
    with pytest.raises(ConfigError, match="6 is not a positive multiple of the network's divisor 8"):
        train(image, labels, TrainingConfig(classes=("a", "b"), patch=6, device="cpu"))


def test_saved_untrained_model_is_loadable_as_init(tmp_path: Path):
    """--init works from any operando weights file of the same classes (here an untrained one)."""
    net = ResidualUNet.preset("small", spatial_dims=2, out_channels=2)
    weights = save_model(tmp_path / "m.safetensors", net, classes=("a", "b"))
    image = da.from_array(np.random.default_rng(0).random((1, 4, 8, 8), dtype=np.float32), chunks=-1)
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[:, :4, :] = 1
    lab[:, 4:, :] = 2
    tifffile.imwrite(tmp_path / "l_t0.tif", lab, photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "l_t0.tif"], image_shape=image.shape, n_classes=2)
    cfg = TrainingConfig(
        classes=("a", "b"), patch=8, steps_per_round=1, max_rounds=1, init=weights, device="cpu"
    )
    result = train(image, labels, cfg)
    assert len(result.history) == 1 and result.normalization is not None
    assert result.provenance["training"]["init"] == str(weights)


def _two_phase(tmp_path: Path) -> tuple[da.Array, SparseLabels]:
    """A noisy two-class image (left dark, right bright), every z-slice labelled."""
    rng = np.random.default_rng(0)
    lab = np.ones((1, 16, 16, 16), np.uint8)
    lab[..., 8:] = 2
    image = (0.3 * lab + 0.05 * rng.standard_normal(lab.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "l_t0.tif", lab[0], photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "l_t0.tif"], image_shape=image.shape, n_classes=2)
    return da.from_array(image, chunks=(1, 8, 16, 16)), labels


@pytest.mark.slow
def test_data_parallel_processes_train_on_the_cpu_and_return_rank_zeros_best(tmp_path: Path):
    """Two DistributedDataParallel processes (gloo): the path taken with several GPUs."""
    image, labels = _two_phase(tmp_path)
    cfg = TrainingConfig(
        classes=("a", "b"), axis=0, patch=16, steps_per_round=60, max_rounds=3, processes=2, device="cpu"
    )
    result = train(image, labels, cfg)
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert result.provenance["training"]["processes"] == 2
    best = max(h["val_mean_iou"] for h in result.history)
    assert result.provenance["training"]["best_validation_mean_iou"] == pytest.approx(best)
    assert result.test.accuracy >= 0.95, result.test.table()
    with pytest.raises(ConfigError, match=r"--processes.*0: need at least one training process"):
        train(image, labels, TrainingConfig(classes=("a", "b"), axis=0, processes=0, device="cpu"))


def _two_small_rounds(cell, **options):
    """Two rounds of two small steps on the phantom's sparse x cross-sections: the wiring, not the IoU."""
    path, _, files = cell
    image = open_dataset(path).intensity.data
    labels = open_label_tiffs(files, image_shape=image.shape, n_classes=5)
    cfg = TrainingConfig(
        classes=CLASSES,
        axis=2,
        patch=16,
        steps_per_round=2,
        max_rounds=2,
        batch_size=2,
        device="cpu",
        **options,
    )
    return train(image, labels, cfg)


@pytest.mark.slow
def test_three_d_patches_train_and_score_only_the_labelled_slices(cell):
    result = _two_small_rounds(cell, spatial_dims=3)
    assert result.network.arguments["spatial_dims"] == 3 and len(result.history) == 2
    # the test split is scored on its labelled slices only: 128 × 64 voxels each
    assert result.test.confusion.sum() == 128 * 64 * len(result.split.test)


# --------------------------------------------------------------------------- 2.5D context


def test_augmentation_moves_every_context_channel_together_and_may_mirror_them():
    rng = np.random.default_rng(3)
    base = rng.random((8, 8)).astype(np.float32)
    x = np.stack([base + 10 * c for c in range(5)])  # channel c = slice c of a 5-slice stack
    y = (base > 0.5).astype(np.uint8) + 1
    orders = set()
    for _ in range(40):
        xa, ya = augment(x, y, rng, rotate=True, jitter=0.0)
        assert xa.shape == (5, 8, 8)
        steps = np.round(xa - xa[2], 3)  # every channel moved like the centre one
        assert all(len(np.unique(steps[c])) == 1 for c in range(5))
        np.testing.assert_array_equal(ya, (xa[2] - 20 > 0.5) + 1)
        orders.add(tuple(steps[:, 0, 0]))
    assert orders == {(-20, -10, 0, 10, 20), (20, 10, 0, -10, -20)}  # the stack is mirrored at random


def test_context_patches_stack_the_clamped_neighbours_and_label_the_centre():
    rng = np.random.default_rng(4)
    vol = rng.random((1, 6, 8, 5)).astype(np.float32)
    lab = np.zeros((6, 8, 5), np.uint8)
    lab[:, :, 0] = rng.integers(1, 3, (6, 8))
    labels = SparseLabels({0: _Memory(lab)}, (6, 8, 5), 2)
    image = da.from_array(vol, chunks=(1, 3, 4, 2))
    src = PatchSource(image, labels, axis=2, spatial_dims=2, patch=4, normalize=lambda a: a, context=2)
    stack, lab2 = src.slice_pair((0, 0))
    np.testing.assert_array_equal(stack, np.moveaxis(vol[0][:, :, [0, 0, 0, 1, 2]], 2, 0))
    np.testing.assert_array_equal(lab2, lab[:, :, 0])
    x, y = src.batch([(0, 0)], np.ones(1), 3, rng, aug=None)
    assert x.shape == (3, 5, 4, 4) and y.shape == (3, 4, 4) and y.any()
    img, _, index = src.eval_pair((0, 0))
    assert index == 2 and img.shape == (5, 6, 8)


def test_context_is_refused_for_3d_patches_and_for_a_model_of_another_context(tmp_path: Path):
    image = da.from_array(np.random.default_rng(0).random((1, 4, 8, 8), dtype=np.float32), chunks=-1)
    lab = np.ones((4, 8, 8), np.uint8)
    lab[:, 4:] = 2
    tifffile.imwrite(tmp_path / "l_t0.tif", lab, photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "l_t0.tif"], image_shape=image.shape, n_classes=2)
    with pytest.raises(ConfigError, match=r"--context: 1 with 3D patches.*for 2D patches only"):
        train(image, labels, TrainingConfig(classes=("a", "b"), spatial_dims=3, context=1, device="cpu"))
    net = ResidualUNet.preset("small", spatial_dims=2, out_channels=2, in_channels=3)
    weights = save_model(
        tmp_path / "m.safetensors",
        net,
        classes=("a", "b"),
        provenance={"training": {"axis": "x", "context": 1}},
    )
    with pytest.raises(
        ArchitectureError, match=r"takes 3 input channel\(s\) but --context 2 makes 5.*--context 1"
    ):
        train(
            image, labels, TrainingConfig(classes=("a", "b"), patch=8, context=2, init=weights, device="cpu")
        )


@pytest.mark.slow
def test_context_training_runs_and_drafts_use_the_neighbours(cell, tmp_path: Path):
    path = cell[0]
    result = _two_small_rounds(cell, context=1)
    assert result.network.arguments["in_channels"] == 3 and len(result.history) == 2
    assert result.test.confusion.sum() == 128 * 64 * len(result.split.test)  # the labelled slices only
    weights, _ = save_result(result, tmp_path / "ctx.safetensors")
    header = read_header(weights)
    assert (header.context, header.axis) == (1, "x")
    drafts = predict_drafts(path, weights, tmp_path / "drafts.zarr", patch=32, device="cpu")
    got = open_dataset(drafts)
    assert got.attrs["context"] == 1 and got.attrs["axis"] == "x"
    model = Normalized(result.network, result.normalization)
    t0 = open_dataset(path).intensity.values[0]
    expected = predict_array(t0, model, patch=32, axes=(0, 1), context=1).argmax(0)
    np.testing.assert_array_equal(got.labels.values[0], expected)
    with pytest.raises(LabelsError, match="'z', but the model was trained with context 1 along 'x'"):
        predict_drafts(path, weights, tmp_path / "d2.zarr", axis="z", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_returns_a_cpu_network_that_saves(cell, tmp_path: Path):
    config = TrainingConfig(
        classes=CLASSES, context=1, patch=32, steps_per_round=20, max_rounds=3, device="cuda"
    )
    result = train(*_image_and_labels(cell), config)
    path = cell[0]
    assert len(result.history) == 3
    assert all(p.device.type == "cpu" for p in result.network.parameters())
    weights, _ = save_result(result, tmp_path / "gpu.safetensors", provenance={"image": str(path)})
    assert read_header(weights).classes == CLASSES
