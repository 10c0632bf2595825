"""The pure numpy kernels behind the phantoms, tested alone."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.synth import _rng
from operando.synth._shapes import bilinear, random_field, rotation_matrix
from operando.synth.ct import cell_geometry, cell_labels
from operando.synth.xanes import default_energies, frame_absorbance, ni_k_edge, xanes_scene

KEY = _rng.stream_key(0, 1)


def test_global_index_is_row_major_linear_index():
    full = (3, 4, 5, 6)
    index = _rng.global_index((1, 2, 0, 3), (2, 2, 5, 3), full)
    expected = np.arange(np.prod(full)).reshape(full)[1:3, 2:4, 0:5, 3:6]
    np.testing.assert_array_equal(index, expected)


def test_uniform_and_normal_have_the_right_moments():
    index = np.arange(200_000, dtype=np.uint64)
    u = _rng.uniform(KEY, index)
    z = _rng.normal(KEY, index)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.01  # neighbours independent


def test_streams_differ():
    index = np.arange(1000, dtype=np.uint64)
    assert not np.array_equal(_rng.normal(KEY, index), _rng.normal(_rng.stream_key(0, 2), index))


@pytest.mark.parametrize("lam", [50.0, 3000.0])
def test_poisson_mean_equals_variance(lam):
    counts = _rng.poisson(KEY, np.arange(100_000, dtype=np.uint64), np.full(100_000, lam))
    assert np.all(counts == np.round(counts))
    assert counts.mean() == pytest.approx(lam, rel=0.01)
    assert counts.var() == pytest.approx(lam, rel=0.05)


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.integers(0, 40), st.integers(0, 40)), st.tuples(st.integers(1, 30), st.integers(1, 30)))
def test_normal_of_a_block_is_the_slice_of_the_whole(origin, shape):
    full = (80, 80)
    whole = _rng.normal(KEY, _rng.global_index((0, 0), full, full))
    block = _rng.normal(KEY, _rng.global_index(origin, shape, full))
    np.testing.assert_array_equal(
        block, whole[origin[0] : origin[0] + shape[0], origin[1] : origin[1] + shape[1]]
    )


def test_bilinear_is_exact_on_grid_nodes_and_independent_of_the_grid_box():
    field = random_field(np.random.default_rng(0), length=10, rms=1.0)
    y = np.arange(5, 25, dtype=float)[:, None]
    x = np.arange(-3, 9, dtype=float)[None, :]
    grid = field(np.arange(0, 30, dtype=float)[:, None], np.arange(-5, 12, dtype=float)[None, :])
    np.testing.assert_array_equal(bilinear(grid, (0, -5), y, x), field(y, x))
    yq, xq = y + 0.37, x + 0.61
    other = field(np.arange(4, 27, dtype=float)[:, None], np.arange(-4, 11, dtype=float)[None, :])
    np.testing.assert_array_equal(bilinear(grid, (0, -5), yq, xq), bilinear(other, (4, -4), yq, xq))


def test_random_field_has_the_requested_rms():
    field = random_field(np.random.default_rng(1), length=8, rms=2.0, n_modes=64)
    values = field(np.arange(512.0)[:, None], np.arange(512.0)[None, :])
    assert values.std() == pytest.approx(2.0, rel=0.25)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=3, max_size=3))
def test_rotation_matrix_is_a_rotation(angles):
    r = rotation_matrix(np.array(angles))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_rotation_about_z_keeps_z():
    r = rotation_matrix(np.array([30.0, 0.0, 0.0]))
    np.testing.assert_allclose(r @ [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotation_matrix(np.zeros(3)), np.eye(3))


def test_ni_k_edge_rises_at_e0():
    e = np.linspace(8250, 8450, 20001)
    mu = ni_k_edge(e, 8347.0)
    assert mu[0] < 0.01 and 0.9 < mu[-1] < 1.1
    rising = e < 8352  # before the white line
    half = e[rising][np.argmin(np.abs(mu[rising] - 0.5))]
    assert half == pytest.approx(8347.0, abs=0.2)


@pytest.mark.parametrize("n", [2, 61, 143, 1000])
def test_default_energies_are_strictly_increasing_and_denser_over_the_edge(n):
    e = default_energies(n)
    assert np.all(np.diff(e) > 0)
    assert e[0] == pytest.approx(8300) and e[-1] == pytest.approx(8400)
    if n > 10:
        step = np.diff(e)
        near = np.abs(e[:-1] - 8347.5) < 5
        assert step[near].max() < step[~near].max() / 3


def _cell():
    return cell_geometry((3, 40, 48, 48), seed=3, times_min=np.array([0.0, 60, 120]), charge_end_min=60)


@settings(max_examples=15, deadline=None)
@given(
    st.integers(0, 2),
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    st.tuples(st.integers(1, 10), st.integers(1, 18), st.integers(1, 18)),
    st.booleans(),
)
def test_cell_labels_of_a_block_are_the_slice_of_the_whole(t, origin, shape, moved):
    cell = _cell()
    whole = cell_labels(cell, t, (0, 0, 0), (40, 48, 48), moved=moved)
    block = cell_labels(cell, t, origin, shape, moved=moved)
    sl = tuple(slice(o, o + n) for o, n in zip(origin, shape, strict=True))
    np.testing.assert_array_equal(block, whole[sl])


def test_frame_absorbance_of_a_block_is_the_slice_of_the_whole():
    shape = (2, 5, 64, 64)
    scene = xanes_scene(shape, seed=2, energies=default_energies(5), n_particles=4, n_debris=1)
    whole = frame_absorbance(scene, 1, 4, (0, 0), (64, 64))
    np.testing.assert_array_equal(frame_absorbance(scene, 1, 4, (10, 23), (31, 17)), whole[10:41, 23:40])
