"""Sub-pixel ROI alignment and its quality measures."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from operando.analysis.xanes.align import align_rois, alignment_error, alignment_quality
from operando.errors import InputError, ShapeMismatchError

SHAPE = (48, 48)


def _blobs(centres, sigma=3.0):
    """Frames (F, Y, X) of an anisotropic Gaussian blob at each centre (F, 2)."""
    yy, xx = np.indices(SHAPE)
    return np.stack(
        [np.exp(-0.5 * (((yy - cy) / sigma) ** 2 + ((xx - cx) / (1.5 * sigma)) ** 2)) for cy, cx in centres]
    )


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.floats(15, 33), st.floats(15, 33)), min_size=1, max_size=4))
def test_rois_match_a_whole_frame_shift(centres):
    frames = _blobs(np.array(centres) + 0.37)
    positions = np.array(centres)[None]
    aligned = align_rois(frames, positions, size=(13, 16)).compute()
    for f, (cy, cx) in enumerate(centres):
        # Oracle: shift the whole frame so the centre lands on the ROI centre (6, 7.5), then crop.
        shifted = ndimage.shift(frames[f], (6 - cy, 7.5 - cx), order=1, mode="nearest")
        np.testing.assert_allclose(aligned[0, f], shifted[:13, :16], atol=1e-5)


def test_aligned_blobs_sit_at_the_roi_centre():
    rng = np.random.default_rng(1)
    centres = rng.uniform(18, 30, (5, 2))
    aligned = align_rois(_blobs(centres), centres[None], size=(15, 15), order=3).compute()
    expected = _blobs(np.array([[7.0, 7.0]]))[0, :15, :15]
    np.testing.assert_allclose(aligned[0], np.broadcast_to(expected, aligned[0].shape), atol=0.02)
    quality = alignment_quality(aligned)
    assert quality.ssim_mean.item() > 0.98 and quality.ssim_var.item() < 1e-3
    assert np.abs(quality.differential.values).max() < 0.03
    # Without the shift, the same measures see the motion.
    still = align_rois(_blobs(centres), np.broadcast_to(centres[:1], centres.shape)[None], size=(15, 15))
    worse = alignment_quality(still.compute())
    assert worse.ssim_mean.item() < quality.ssim_mean.item() - 0.05
    assert np.abs(worse.differential.values).max() > 0.2


def test_lazy_and_read_one_chunk_at_a_time():
    centres = np.full((6, 2), 24.0)
    reads = []

    def record(block, block_info=None):
        reads.append(block_info[0]["array-location"][0])
        return block

    stack = da.from_array(_blobs(centres), chunks=(2, 48, 48)).map_blocks(record, dtype=np.float64)
    aligned = align_rois(stack, np.stack([centres, centres - 3]), size=(9, 9))
    assert isinstance(aligned, da.Array) and aligned.shape == (2, 6, 9, 9) and not reads
    with dask.config.set(scheduler="sync"):
        aligned.compute()
    assert sorted(reads) == [(0, 2), (2, 4), (4, 6)]


def test_lost_frames_are_nan():
    centres = np.full((3, 2), 24.0)
    positions = centres[None].copy()
    positions[0, 1] = np.nan
    aligned = align_rois(_blobs(centres), positions, size=(5, 5)).compute()
    assert np.isnan(aligned[0, 1]).all() and np.isfinite(aligned[0, [0, 2]]).all()
    quality = alignment_quality(aligned)
    assert np.isfinite(quality.ssim_mean.item())


def test_alignment_error_ignores_a_constant_offset():
    truth = np.random.default_rng(2).normal(size=(3, 10, 2))
    assert alignment_error(truth + 5.0, truth) == pytest.approx(0.0, abs=1e-12)
    noisy = truth.copy()
    noisy[:, 1:] += (
        0.2  # every later frame off by 0.2 px: a 0.18 px offset, then -0.18 once, +0.02 nine times
    )
    assert alignment_error(noisy, truth) == pytest.approx(np.sqrt((0.18**2 + 9 * 0.02**2) / 10))


def test_bad_inputs_are_errors():
    frames = _blobs(np.full((2, 2), 24.0))
    with pytest.raises(ShapeMismatchError, match="not \\(P, F, 2\\)"):
        align_rois(frames, np.zeros((1, 3, 2)), size=(5, 5))
    with pytest.raises(InputError, match="order 7"):
        align_rois(frames, np.zeros((1, 2, 2)), size=(5, 5), order=7)
    with pytest.raises(ShapeMismatchError, match="differs"):
        alignment_error(np.zeros((1, 2, 2)), np.zeros((1, 3, 2)))
