"""Crop parsing, class roles and the split plane (operando.analysis.ct.regions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.analysis.ct import regions
from operando.errors import AxisError, ClassNameError, ConfigError, CropError

SIZES = {"time": 3, "z": 48, "y": 64, "x": 64}


def test_parse_crop_negative_and_open_bounds():
    crop = regions.parse_crop("y=12:-12, x=:40,z=-8:", SIZES)
    assert crop == {"y": slice(12, 52), "x": slice(0, 40), "z": slice(40, 48)}
    assert regions.parse_crop(None, SIZES) == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("y=12-12", "not dim=start:stop"),
        ("w=0:4", "'w' is not a dimension"),
        ("y=0:4,y=1:2", "named twice"),
        ("y=70:80", "y=70:80 selects nothing inside y's 64 voxels"),
        ("x=10:10", "selects nothing"),
        ("x=-100:", "selects nothing inside x's 64"),
    ],
)
def test_parse_crop_errors(text, match):
    with pytest.raises(CropError, match=match):
        regions.parse_crop(text, SIZES)


def test_resolve_roles_by_name_and_mapping():
    classes = {0: "background", 1: "electrode", 2: "deposited", 3: "dendrite", 4: "pit"}
    assert regions.resolve_roles(classes) == dict(zip(regions.ROLES, range(5), strict=True))
    renamed = {0: "bg", 1: "electrode", 2: "li", 3: "dendrite", 4: "pit"}
    roles = regions.resolve_roles(renamed, {"background": "bg", "deposited": "li"})
    assert roles["deposited"] == 2 and roles["background"] == 0


def test_resolve_roles_errors_name_missing_and_available():
    with pytest.raises(
        ClassNameError, match=r"missing classes \['deposited'\].*classes with no role \['li'\]"
    ):
        regions.resolve_roles({0: "background", 1: "electrode", 2: "li", 3: "dendrite", 4: "pit"})
    with pytest.raises(ClassNameError, match="unknown roles"):
        regions.resolve_roles({0: "background"}, {"void": "background"})


def test_resolve_normal():
    dims = ("time", "z", "y", "x")
    assert regions.resolve_normal(dims, None, {}) == "z"
    assert regions.resolve_normal(dims, None, {"normal_axis": "y"}) == "y"
    with pytest.raises(AxisError, match="'q' is not a spatial dimension"):
        regions.resolve_normal(dims, "q", {})
    with pytest.raises(AxisError, match="'time'"):
        regions.resolve_normal(dims, "time", {})


def test_split_plane_is_middle_of_longest_gap():
    row = np.array([1, 1, 1, 0.2, 0, 0, 0, 0, 0.1, 1, 1, 0, 1.0])
    # Longest low run: slices 3..8 → plane between 5 and 6.
    assert regions.split_planes(row[None]).tolist() == [6]


def test_plating_side_auto():
    low, high = np.array([0, 0, 0, 50]), np.array([0, 10, 20, 0])
    # grows on the high side during charge; redeposited at the low side during discharge: ignored
    assert regions.choose_plating_side(low, high) == "high"
    assert regions.choose_plating_side(high, low) == "low"
    with pytest.raises(ConfigError, match="cannot tell"):
        regions.choose_plating_side(np.zeros(4), np.zeros(4))


@pytest.mark.parametrize(
    ("grid", "rows", "cols"),
    [
        ((9, 4), [2, 6], [2]),  # strides 4 x 4
        ((1, 32), [0], [8, 24]),  # a grid one chunk high is thinned along x alone
        ((32, 1), [8, 24], [0]),
        ((2, 2), [1], [1]),
        ((1, 1), [0], [0]),
    ],
)
def test_sample_blocks_reads_about_one_column_in_sixteen(grid, rows, cols):
    assert regions.sample_blocks(grid) == (rows, cols)


@given(st.integers(1, 200), st.integers(1, 200))
def test_sample_blocks_never_reads_much_more_than_its_share(ny, nx):
    rows, cols = regions.sample_blocks((ny, nx))
    assert rows and cols and rows[-1] < ny and cols[-1] < nx
    assert len(rows) * len(cols) <= max(1, 2 * ny * nx / 16 + 2 * (ny + nx) / 4)


@settings(deadline=None)  # the first example compiles the numba kernel
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(1, 1, 1), (5, 1, 7), (9, 3, 4), (40, 4, 6)]),  # tail only, words + tail, …
    value=st.integers(0, 3),
    layered=st.booleans(),
)
def test_slice_counts_match_numpy(seed, shape, value, layered):
    """The sample's kernel (runs, eight columns per compare) against a plain per-slice count."""
    rng = np.random.default_rng(seed)
    chunk = rng.integers(0, 4, shape, dtype=np.uint8)
    if layered:  # runs of equal slices, as layers along the normal
        chunk = chunk[np.sort(rng.integers(0, max(1, shape[0] // 3), shape[0]))]
    block = chunk[None]
    got = regions._slice_counts(block, np.uint8(value))
    np.testing.assert_array_equal(got[0, :, 0, 0], (chunk == value).sum(axis=(1, 2)))
