"""Compiled in-plane reductions of the statistics against numpy (operando.analysis.ct._planes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from operando.analysis.ct._planes import pearson, plane_totals

_MAPS = hnp.arrays(
    st.sampled_from([np.uint16, np.int32, np.uint8]),
    hnp.array_shapes(min_dims=4, max_dims=4, max_side=7),
    elements=st.integers(0, 255),
)


@settings(max_examples=60, deadline=None)
@given(_MAPS, st.booleans())
def test_plane_totals_match_numpy(maps, strided):
    if strided:  # a view of some planes, as the faces are of the pass's partials
        maps = maps[:, ::2]
    sums, nonzero = plane_totals(maps)
    np.testing.assert_array_equal(sums, maps.sum(axis=(2, 3), dtype=np.int64))
    np.testing.assert_array_equal(nonzero, np.count_nonzero(maps, axis=(2, 3)))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.uint16, st.tuples(st.just(2), st.integers(2, 40), st.integers(2, 40)), elements=st.integers(0, 512)
    )
)
def test_pearson_matches_corrcoef(pair):
    x, y = pair
    if x.min() == x.max() or y.min() == y.max():
        assert math.isnan(pearson(x, y))
    else:
        expected = np.corrcoef(x.ravel().astype(float), y.ravel().astype(float))[0, 1]
        assert pearson(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pearson_is_exact_on_large_maps():
    x = np.arange(2**20, dtype=np.int64).reshape(1024, 1024) % 60_000
    assert pearson(x, 3 * x + 7) == pytest.approx(1.0, abs=1e-15)
    assert pearson(x.astype(np.uint16), (60_000 - x).astype(np.int32)) == pytest.approx(-1.0, abs=1e-15)


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match=r"integer maps of shape \(T, C, A, B\) needed, got float64"):
        plane_totals(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="integer maps of one shape needed"):
        pearson(np.zeros((3, 4), np.uint16), np.zeros((4, 3), np.uint16))
