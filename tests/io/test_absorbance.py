"""The absorbance kernel: -ln((I - dark) / (flat - dark)) with counted clipping."""

from __future__ import annotations

import dask.array as da
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from operando.io.xanes import MAX_ABSORBANCE, absorbance, count_clipped, lazy_absorbance

counts = arrays(np.float64, (4, 5), elements=st.floats(10, 6e4))
absorb = arrays(np.float64, (4, 5), elements=st.floats(0, 5))


@given(sample=counts, a=absorb, dark=st.floats(0, 5))
@settings(max_examples=50, deadline=None)
def test_flat_times_exp_a_recovers_a(sample: np.ndarray, a: np.ndarray, dark: float) -> None:
    flat = (sample - dark) * np.exp(a) + dark
    out, n = absorbance(sample, flat, dark)
    assert out.dtype == np.float32
    assert n == 0
    np.testing.assert_allclose(out, a, atol=1e-4)


@given(n_bad=st.integers(0, 20))
@settings(max_examples=20, deadline=None)
def test_non_positive_ratios_are_clipped_and_counted(n_bad: int) -> None:
    sample = np.full(20, 100.0)
    sample[:n_bad] = -1.0  # below the dark: a negative ratio
    out, n = absorbance(sample, np.full(20, 200.0), np.zeros(20))
    assert n == n_bad
    assert np.all(out[:n_bad] == MAX_ABSORBANCE)
    np.testing.assert_allclose(out[n_bad:], np.log(2), rtol=1e-6)


def test_flat_at_dark_is_clipped_not_inf() -> None:
    out, n = absorbance(np.array([5.0, 5.0]), np.array([2.0, 7.0]), np.array([2.0, 2.0]))
    assert n == 1
    assert np.isfinite(out).all()


def test_lazy_mapping_matches_kernel_and_count_reads_the_result() -> None:
    rng = np.random.default_rng(0)
    sample = rng.uniform(-5, 100, (2, 3, 8, 8))
    flat = rng.uniform(50, 100, (1, 3, 8, 8))
    lazy = lazy_absorbance(
        da.from_array(sample, chunks=(1, 1, 8, 8)), da.from_array(flat, chunks=(1, 1, 8, 8))
    )
    expected, n = absorbance(sample, flat)
    np.testing.assert_array_equal(lazy.compute(), expected)
    assert n > 0
    assert count_clipped(lazy) == n
