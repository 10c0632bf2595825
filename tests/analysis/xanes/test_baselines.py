"""Registration baselines: known translations, accumulation, the XANES phantom, bad input."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from operando.analysis.xanes.baselines import METHODS, apply_shifts, register_pair, register_stack
from operando.errors import ConfigError, ReferenceIndexError, ShapeMismatchError
from operando.io.xanes import lazy_absorbance
from operando.synth.xanes import make_xanes

# Worst error (px, per axis) on a noiseless pure translation; measured ≤ 0.09, 0.03, 0.05, 0.05.
PRECISION = {"template-abs": 0.2, "template-rel": 0.2, "phase": 0.1, "sift": 0.5, "optical-flow": 0.3}
shift_px = st.floats(-3.0, 3.0, allow_nan=False)


def _texture(seed: int = 0, size: int = 64) -> np.ndarray:
    """A textured particle on a flat background, (size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2 + 2) ** 2 < (0.28 * size) ** 2).astype(float)
    return ndimage.gaussian_filter(disk, 1.5) * (
        1 + 3 * ndimage.gaussian_filter(rng.normal(size=disk.shape), 1.5)
    )


def _translate(image: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Exact band-limited translation (the content lies away from the wrapping border)."""
    return np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(image), shift)).real


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=6, deadline=None)
@given(dy=shift_px, dx=shift_px, seed=st.integers(0, 5))
def test_recovers_a_pure_translation(method, dy, dx, seed):
    image = _texture(seed)
    truth = np.array([dy, dx])
    shifts = register_stack(np.stack([image, _translate(image, truth)]), method=method)
    assert shifts.shape == (2, 2) and shifts.dtype == np.float64
    np.testing.assert_array_equal(shifts[0], 0.0)
    np.testing.assert_allclose(shifts[1], truth, atol=PRECISION[method])


def test_template_rel_accumulates_consecutive_shifts():
    image = _texture(1)
    steps = np.array([[0.0, 0.0], [1.2, -0.7], [0.9, 1.3], [-2.1, 0.4], [0.6, 0.8]])
    path = np.cumsum(steps, axis=0)
    frames = np.stack([_translate(image, p) for p in path])
    shifts = register_stack(frames, method="template-rel", reference=2)
    pairs = [register_pair(frames[f - 1], frames[f], method="template-abs") for f in range(1, len(frames))]
    expected = np.cumsum([np.zeros(2), *pairs], axis=0)
    np.testing.assert_allclose(shifts, expected - expected[2], atol=1e-12)
    np.testing.assert_allclose(shifts, path - path[2], atol=0.3)


@pytest.mark.parametrize("method", METHODS)
def test_single_frame_gives_zero(method):
    shifts = register_stack(_texture()[None], method=method)
    np.testing.assert_array_equal(shifts, np.zeros((1, 2)))


def _particle_stack(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One particle across the Ni edge: absorbance (E, Y, X), true shifts vs the last frame, post-edge mask."""
    data, truth = make_xanes(shape=(1, 15, 64, 64), seed=seed, n_particles=1, n_debris=0)
    frames = lazy_absorbance(data["counts"].data, data["flat"].data, data["dark"].data)[0]
    centre = truth["centre_px"].values[0, :, 0]
    return frames.compute(), centre - centre[-1], truth["energy"].values > 8352.0


# RMS error (px) above the edge against the last frame; measured 0.02, 0.04, 0.06, 0.13, 0.75 (seed 0).
ABOVE_EDGE_RMS = {"template-abs": 0.3, "template-rel": 0.3, "phase": 0.3, "sift": 0.5, "optical-flow": 1.5}


@pytest.mark.parametrize("method", METHODS)
def test_phantom_particle_above_the_edge(method):
    frames, truth, above = _particle_stack(0)
    shifts = register_stack(frames, method=method, reference=-1)
    error = np.linalg.norm(shifts - truth, axis=1)[above]
    assert np.sqrt(np.mean(error**2)) <= ABOVE_EDGE_RMS[method]


def test_apply_shifts_undoes_the_motion_lazily():
    image = _texture(2)
    truth = np.array([[0.0, 0.0], [1.5, -2.0], [-0.8, 0.6]])
    frames = np.stack([_translate(image, s) for s in truth])
    aligned = apply_shifts(frames, truth)
    np.testing.assert_allclose(aligned[1:, 8:-8, 8:-8], frames[:1, 8:-8, 8:-8].repeat(2, 0), atol=0.05)
    lazy = apply_shifts(da.from_array(frames, chunks=(2, 32, 32)), truth)
    assert isinstance(lazy, da.Array)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(lazy.compute(), aligned)


def test_apply_shifts_leaves_failed_frames_nan():
    frames = np.stack([_texture(), _texture()])
    aligned = apply_shifts(frames, np.array([[0.0, 0.0], [np.nan, np.nan]]))
    assert np.isnan(aligned[1]).all() and np.isfinite(aligned[0]).all()


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'ecc'.*template-abs, template-rel, phase, sift, optical-flow"):
        register_stack(np.zeros((2, 8, 8)), method="ecc")


def test_bad_shapes_and_reference_raise():
    frames = np.stack([_texture(), _texture()])
    with pytest.raises(ShapeMismatchError, match=r"frames: shape \(64, 64\)"):
        register_stack(frames[0], method="phase")
    with pytest.raises(ReferenceIndexError, match="frame 2 is outside a stack of 2"):
        register_stack(frames, method="phase", reference=2)
    with pytest.raises(ShapeMismatchError, match=r"shifts: shape \(3, 2\)"):
        apply_shifts(frames, np.zeros((3, 2)))
    with pytest.raises(ShapeMismatchError, match="not one 2-D shape"):
        register_pair(frames[0], frames[0, :32], method="phase")
