"""Tree reductions over zarr chunks equal numpy on the whole array."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

from operando.engine.reduce import bounding_boxes, label_counts, map_reduce, moments
from operando.errors import LabelRangeError


@pytest.fixture
def labels(tmp_path):
    rng = np.random.default_rng(3)
    data = np.zeros((13, 17, 11), dtype="u2")
    for label in (1, 2, 5, 9):
        lo = rng.integers(0, [10, 14, 8])
        hi = lo + rng.integers(1, 5, size=3)
        data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = label
    arr = zarr.open_group(str(tmp_path / "l.zarr"), mode="w").create_array(
        "labels", shape=data.shape, chunks=(4, 5, 3), dtype=data.dtype
    )
    arr[...] = data
    return data, arr


def test_label_counts(labels):
    data, arr = labels
    np.testing.assert_array_equal(label_counts(arr, 12), np.bincount(data.ravel(), minlength=12))
    with pytest.raises(LabelRangeError, match=r"label \d+ is outside \[0, 4\)"):
        label_counts(arr, 4)


def test_bounding_boxes(labels):
    data, arr = labels
    objects = ndi.find_objects(data)
    want = {i + 1: s for i, s in enumerate(objects) if s is not None}
    assert bounding_boxes(arr) == want


def test_moments(tmp_path):
    data = np.random.default_rng(4).normal(1e4, 3.0, size=(37, 29)).astype("f4")
    arr = zarr.open_group(str(tmp_path / "m.zarr"), mode="w").create_array(
        "x", shape=data.shape, chunks=(8, 7), dtype=data.dtype
    )
    arr[...] = data
    got = moments(arr, split_every=2)
    d = data.astype(np.float64)
    assert got["count"] == d.size
    assert got["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert got["sum"] == pytest.approx(d.sum(), rel=1e-12)
    assert got["var"] == pytest.approx(d.var(), rel=1e-9)
    assert (got["min"], got["max"]) == (d.min(), d.max())


def test_distributed_tree(labels, client):
    data, arr = labels
    np.testing.assert_array_equal(
        label_counts(arr, 10, client=client), np.bincount(data.ravel(), minlength=10)
    )
    assert bounding_boxes(arr, client=client) == bounding_boxes(arr)
    total = map_reduce(
        lambda b, *, offset: int(b.sum()), lambda a, b: a + b, arr, client=client, split_every=3
    )
    assert total == int(data.sum())
