"""The pure sliding-window kernel: oracles, seam exactness, MONAI peer equality, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operando.engine.patches import (
    PatchGrid,
    blend_weights,
    halo_for,
    labels_from_logits,
    predict_array,
    predict_region,
    probabilities,
)
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

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BLENDS = st.sampled_from(["mean", "gaussian"])
OVERLAPS = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9])


def times_two(ndim: int) -> torch.nn.Module:
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.zero_()
    return conv.eval()


def conv_net(ndim: int, seed: int, classes: int = 3) -> torch.nn.Module:
    """A small random net whose 3×3 convs make patch borders matter."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, classes, 3, padding=1)
    ).eval()


@st.composite
def cases(draw, ndim_patch: int, ndim_array: int):
    """(array shape, patch axes, patch sizes, overlap)."""
    shape = tuple(draw(st.integers(3, 24 if ndim_patch == 2 else 12)) for _ in range(ndim_array))
    axes = tuple(sorted(draw(st.permutations(range(ndim_array)))[:ndim_patch]))
    patch = tuple(draw(st.integers(2, shape[a] + 3)) for a in axes)  # some patches exceed the array
    return shape, axes, patch, draw(OVERLAPS)


@st.composite
def chunkings(draw, shape):
    """Regions tiling the array: split points per axis."""
    cuts = []
    for n in shape:
        inner = draw(st.lists(st.integers(1, n - 1), max_size=3, unique=True)) if n > 1 else []
        cuts.append([0, *sorted(inner), n])
    return [
        tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, idx, strict=True))
        for idx in itertools.product(*(range(len(c) - 1) for c in cuts))
    ]


def stitch(array, grid, model, regions, **kw):
    out = None
    for region in regions:
        read = halo_for(grid, region).read
        part = predict_region(array[read], [s.start for s in read], region, grid, model, **kw)
        if out is None:
            out = np.full((part.shape[0], *array.shape), np.nan, np.float32)
        out[(slice(None), *region)] = part
    return out


# ---------------------------------------------------------------- oracles


@SETTINGS
@given(st.data(), st.sampled_from([(2, 2), (2, 3), (3, 3)]), BLENDS, st.integers(1, 5))
def test_identity_and_times_two_stitch_back(data, dims, blend, batch_size):
    shape, axes, patch, overlap = data.draw(cases(*dims))
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, shape).astype(np.float32)  # integers: the mean blend is exact
    kw = {"patch": patch, "overlap": overlap, "axes": axes, "blend": blend, "batch_size": batch_size}
    for model, factor in ((lambda x: x, 1), (times_two(dims[0]), 2)):
        got = predict_array(array, model, out_channels=1, **kw)[0]
        if blend == "mean":
            np.testing.assert_array_equal(got, factor * array)
        else:
            np.testing.assert_allclose(got, factor * array, rtol=2e-6, atol=1e-5)


# ---------------------------------------------------------------- seam exactness


@SETTINGS
@given(st.data(), st.sampled_from([(2, 2), (2, 3), (3, 3)]), BLENDS, st.integers(1, 4))
def test_regions_equal_the_whole_array_pass(data, dims, blend, batch_size):
    shape, axes, patch, overlap = data.draw(cases(*dims))
    model = conv_net(dims[0], seed=1)
    array = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    grid = PatchGrid.build(shape, patch=patch, overlap=overlap, axes=axes)
    kw = {"blend": blend, "batch_size": batch_size, "out_channels": 3}
    whole = predict_region(array, (0,) * len(shape), None, grid, model, **kw)
    stitched = stitch(array, grid, model, data.draw(chunkings(shape)), **kw)
    np.testing.assert_array_equal(stitched, whole)


def test_halo_is_region_plus_touching_patches():
    grid = PatchGrid.build((40, 10), patch=(16, 10), overlap=0.5)
    assert grid.starts == ((0, 8, 16, 24), (0,))
    halo = halo_for(grid, (slice(17, 20), slice(2, 5)))
    assert halo.patches == (range(1, 3), range(0, 1))  # [8, 24) and [16, 32)
    assert halo.read == (slice(8, 32), slice(0, 10))


def test_grid_pads_short_axes_and_ends_flush():
    grid = PatchGrid.build((5, 50), patch=(8, 16), overlap=0.25)
    assert grid.starts[0] == (-1,)  # (8 - 5) // 2 = 1 zero before
    assert grid.starts[1] == (0, 12, 24, 34)  # stride int(16 * 0.75) = 12; last flush to 50
    assert grid.n_patches == 4


def test_three_d_volume_with_two_d_patches_treats_slices_independently():
    model = conv_net(2, seed=2)
    volume = np.random.default_rng(2).standard_normal((4, 20, 18)).astype(np.float32)
    got = predict_array(volume, model, patch=8, overlap=0.5, axes=(0, 2), blend="gaussian")
    for y in range(volume.shape[1]):
        alone = predict_array(volume[:, y], model, patch=8, overlap=0.5, blend="gaussian")
        np.testing.assert_array_equal(got[:, :, y], alone)


# ---------------------------------------------------------------- peer: MONAI


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((64, 48), (16, 16), 0.25),
        ((37, 53), (16, 24), 0.5),
        ((10, 40), (16, 8), 0.6),  # padded: the array is shorter than the patch
        ((20, 18, 22), (8, 8, 8), 0.25),
        ((9, 30, 17), (12, 10, 8), 0.4),
    ],
)
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_equals_monai_sliding_window_inference(shape, patch, overlap, blend):
    inferers = pytest.importorskip("monai.inferers")
    model = conv_net(len(shape), seed=3)
    array = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ours = predict_array(array, model, patch=patch, overlap=overlap, blend=blend, batch_size=4)
    with torch.inference_mode():
        theirs = inferers.sliding_window_inference(
            torch.from_numpy(array)[None, None],
            patch,
            4,
            model,
            overlap=overlap,
            mode="constant" if blend == "mean" else "gaussian",
        )[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_gaussian_weights_equal_monai_importance_map():
    utils = pytest.importorskip("monai.data.utils")
    for patch in [(16, 16), (7, 12), (8, 8, 5)]:
        theirs = utils.compute_importance_map(patch, mode="gaussian").numpy()
        np.testing.assert_array_equal(blend_weights(patch, mode="gaussian"), theirs)
    np.testing.assert_array_equal(blend_weights((3, 4)), np.ones((3, 4), np.float32))


# ---------------------------------------------------------------- labels and probabilities


def test_labels_and_probabilities_from_averaged_logits():
    logits = np.random.default_rng(4).standard_normal((3, 5, 6)).astype(np.float32)
    labels = labels_from_logits(logits)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, logits.argmax(0))
    probs = probabilities(logits)
    assert probs.dtype == np.float16
    expected = torch.softmax(torch.from_numpy(logits), 0).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_array_equal(probs.argmax(0), labels)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_overlap_outside_unit_interval(overlap):
    with pytest.raises(PatchOverlapError, match=r"overlap=.*outside \[0, 1\)"):
        PatchGrid.build((32, 32), patch=8, overlap=overlap)


@pytest.mark.parametrize("axes", [(0, 3), (1, 1), (0,), (0, 1, 2, 3), (-4, 0)])
def test_axes_not_in_array(axes):
    with pytest.raises(PatchAxesError, match=r"axes=.*not 2 or 3 distinct axes .* shape \(4, 5, 6\)"):
        PatchGrid.build((4, 5, 6), patch=3, axes=axes)


@pytest.mark.parametrize("patch", [0, (8,), (8, -1), (8, 2.5)])
def test_bad_patch_size(patch):
    with pytest.raises(PatchSizeError, match="not one positive int per patch axis"):
        PatchGrid.build((32, 32), patch=patch)


def test_patch_larger_than_array_is_padded_not_an_error():
    array = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(predict_array(array, lambda x: x, patch=(8, 8))[0], array)


def test_unknown_blend():
    with pytest.raises(BlendModeError, match="blend='median'"):
        predict_array(np.zeros((8, 8), np.float32), lambda x: x, patch=4, blend="median")


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (lambda x: x[:, :, :-1], r"output shape \(2, 1, 3, 4\), expected \(2, C, 4, 4\)"),
        (lambda x: x[:, 0], r"output shape \(2, 4, 4\), expected \(2, C, 4, 4\)"),
        (lambda x: x[:1], r"output shape \(1, 1, 4, 4\)"),
        (lambda x: x.numpy(), r"returned ndarray, expected a tensor"),
    ],
)
def test_model_output_of_wrong_shape(model, match):
    with pytest.raises(ModelOutputError, match=match):
        predict_array(np.zeros((8, 8), np.float32), model, patch=4, batch_size=2)


def test_model_output_of_wrong_channel_count():
    with pytest.raises(ModelOutputError, match=r"output shape \(2, 3, 4, 4\), expected \(2, 2, 4, 4\)"):
        predict_array(np.zeros((8, 8), np.float32), conv_net(2, 0), patch=4, batch_size=2, out_channels=2)


@pytest.mark.parametrize(
    "region",
    [(slice(0, 8),), (slice(2, 2), slice(0, 8)), (slice(0, 9), slice(0, 8)), (slice(0, 8, 2), slice(0, 8))],
)
def test_bad_region(region):
    grid = PatchGrid.build((8, 8), patch=4)
    with pytest.raises(RegionError, match="not a non-empty unit-step box inside the shape"):
        halo_for(grid, region)


def test_block_not_covering_the_halo():
    grid = PatchGrid.build((32, 32), patch=8, overlap=0.5)
    region = (slice(8, 16), slice(8, 16))
    with pytest.raises(
        HaloCoverageError, match=r"block at \(8, 8\) of shape \(8, 8\).*does not cover the halo"
    ):
        predict_region(np.zeros((8, 8), np.float32), (8, 8), region, grid, lambda x: x)


# ---------------------------------------------------------------- 2.5D context


CONTEXT_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def channel_mix(k: int, weights: dict[int, float]) -> torch.nn.Module:
    """1×1 conv of the 2k + 1 context channels: output = Σ weights[c] · channel c."""
    conv = torch.nn.Conv2d(2 * k + 1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c, w in weights.items():
            conv.weight[0, c] = w
    return conv.eval()


def context_net(k: int, seed: int) -> torch.nn.Module:
    """Random 3×3 convs over 2k + 1 input channels: patch borders and every neighbour matter."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2 * k + 1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1)
    ).eval()


@st.composite
def context_cases(draw, ndim_array: int):
    """(shape, 2D patch axes among the last three, the context axis, patch, overlap, k)."""
    shape = tuple(draw(st.integers(2, 3)) for _ in range(ndim_array - 3))
    shape += tuple(draw(st.integers(3, 14)) for _ in range(3))
    spatial = range(ndim_array - 3, ndim_array)
    free = draw(st.sampled_from(spatial))
    axes = tuple(a for a in spatial if a != free)
    patch = tuple(draw(st.integers(2, shape[a] + 3)) for a in axes)
    return shape, axes, free, patch, draw(OVERLAPS), draw(st.integers(0, 4))


def clamped(array: np.ndarray, axis: int, shift: int) -> np.ndarray:
    """``array`` at index ``i + shift`` along ``axis`` for every i, clamped to the ends."""
    n = array.shape[axis]
    return np.take(array, np.clip(np.arange(n) + shift, 0, n - 1), axis=axis)


@CONTEXT_SETTINGS
@given(st.data(), st.sampled_from([3, 4]), BLENDS)
def test_context_centre_channel_times_two_stitches_back(data, ndim, blend):
    shape, axes, _, patch, overlap, k = data.draw(context_cases(ndim))
    array = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    got = predict_array(
        array, channel_mix(k, {k: 2.0}), patch=patch, overlap=overlap, axes=axes, context=k, blend=blend
    )[0]
    if blend == "mean":
        np.testing.assert_array_equal(got, 2 * array)
    else:
        np.testing.assert_allclose(got, 2 * array, rtol=2e-6, atol=1e-5)


@CONTEXT_SETTINGS
@given(st.data(), st.sampled_from([3, 4]))
def test_context_channels_are_the_clamped_neighbours(data, ndim):
    shape, axes, free, patch, overlap, k = data.draw(context_cases(ndim))
    k = max(k, 1)
    array = np.random.default_rng(1).integers(0, 256, shape).astype(np.float32)
    model = channel_mix(k, {0: 1.0, 2 * k: -1.0})
    got = predict_array(array, model, patch=patch, overlap=overlap, axes=axes, context=k)[0]
    np.testing.assert_array_equal(got, clamped(array, free, -k) - clamped(array, free, k))


@CONTEXT_SETTINGS
@given(st.data(), st.sampled_from([3, 4]), BLENDS, st.integers(1, 4))
def test_context_regions_equal_the_whole_array_pass(data, ndim, blend, batch_size):
    shape, axes, free, patch, overlap, k = data.draw(context_cases(ndim))
    array = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    grid = PatchGrid.build(shape, patch=patch, overlap=overlap, axes=axes, context=k)
    assert grid.context_axis == (free if k else None) and grid.channels == 2 * k + 1
    kw = {"blend": blend, "batch_size": batch_size, "out_channels": 2}
    whole = predict_region(array, (0,) * len(shape), None, grid, context_net(k, 3), **kw)
    stitched = stitch(array, grid, context_net(k, 3), data.draw(chunkings(shape)), **kw)
    np.testing.assert_array_equal(stitched, whole)


def test_context_halo_grows_by_k_along_the_context_axis_only():
    grid = PatchGrid.build((10, 40, 12), patch=(16, 12), overlap=0.5, axes=(1, 2), context=2)
    read = halo_for(grid, (slice(4, 6), slice(17, 20), slice(0, 12))).read
    assert read == (slice(2, 8), slice(8, 32), slice(0, 12))
    edge = halo_for(grid, (slice(0, 1), slice(0, 4), slice(0, 12))).read
    assert edge[0] == slice(0, 3)  # clamped at the array start


def test_context_region_of_one_slice_equals_its_whole_pass():
    volume = np.random.default_rng(4).standard_normal((7, 20, 18)).astype(np.float32)
    kw = {"patch": 8, "overlap": 0.5, "axes": (1, 2), "context": 2}
    whole = predict_array(volume, context_net(2, 5), **kw)
    one = predict_array(volume, context_net(2, 5), region=(slice(3, 4), slice(None), slice(None)), **kw)
    np.testing.assert_array_equal(one, whole[:, 3:4])


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((6, 8, 8), (0, 1, 2)), ((3, 6, 8, 8), (0, 1)), ((8, 8), (0, 1)), ((2, 3, 8, 8, 8), (0, 3))],
)
def test_context_without_a_single_context_axis(shape, axes):
    with pytest.raises(PatchAxesError, match=r"context=1.*no single context axis.*Pass 2D patch axes"):
        PatchGrid.build(shape, patch=4, axes=axes, context=1)


@pytest.mark.parametrize("context", [-1, 1.5, True])
def test_context_not_a_non_negative_int(context):
    with pytest.raises(ConfigError, match=r"context=.*not a non-negative int"):
        PatchGrid.build((4, 8, 8), patch=4, axes=(1, 2), context=context)
