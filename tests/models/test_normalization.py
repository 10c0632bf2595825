"""Normalization: clip-and-scale oracles, numpy/torch identity, out-of-core percentile fitting."""

from __future__ import annotations

import json
import threading
import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.errors import ConfigError
from operando.models.normalization import Normalization, Normalized, fit_normalization


def test_apply_maps_low_to_0_high_to_1_and_clips():
    norm = Normalization(100.0, 300.0)
    x = np.array([0, 100, 150, 200, 300, 1000], dtype=np.uint16)
    y = norm.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.array([0, 0, 0.25, 0.5, 1, 1], dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_numpy_and_torch_give_identical_float32(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((3, 50, 40)) * 250).astype(dtype)
    norm = Normalization(17.3, 201.9)
    a = norm.apply(x)
    t = norm.apply(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == x.shape
    np.testing.assert_array_equal(a, t.numpy())  # bit for bit: training and inference agree
    assert a.min() == 0.0 and a.max() == 1.0


def test_apply_does_not_modify_its_input():
    x = torch.linspace(-1, 2, 7)
    before = x.clone()
    Normalization(0.0, 1.0).apply(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        (1.0, 1.0, "degenerate"),
        (2.0, 1.0, "degenerate"),
        (0.0, float("inf"), "finite"),
        (float("nan"), 1.0, "finite"),
    ],
)
def test_degenerate_or_non_finite_range_is_refused(low, high, match):
    with pytest.raises(ConfigError, match=match):
        Normalization(low, high)


@pytest.mark.parametrize("percentiles", [(99.5, 0.5), (-1, 50), (50, 101), (1,), "ab"])
def test_bad_percentiles_are_refused(percentiles):
    with pytest.raises(ConfigError, match="percentiles"):
        Normalization(0.0, 1.0, percentiles)
    with pytest.raises(ConfigError, match="percentiles"):
        fit_normalization(da.arange(10.0, chunks=5), percentiles=percentiles)


@settings(max_examples=50, deadline=None)
@given(
    low=st.floats(-1e6, 1e6), width=st.floats(1e-3, 1e30), p=st.tuples(st.floats(0, 49), st.floats(51, 100))
)
def test_dict_round_trip_through_json(low, width, p):
    norm = Normalization(low, low + width, p)
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"low": 0.0}, "'low' and 'high'"),
        ({"low": "a", "high": 1}, "numbers"),
        ({"low": 0, "high": 1, "gain": 2}, "unknown"),
    ],
)
def test_from_dict_refuses_bad_dicts(d, match):
    with pytest.raises(ConfigError, match=match):
        Normalization.from_dict(d)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(2, 12), st.integers(1, 12), st.integers(1, 12)),
    chunk=st.integers(3, 9),
    p=st.tuples(st.floats(0, 49), st.floats(51, 100)),
)
def test_fit_equals_numpy_percentile_when_every_voxel_fits_the_sample(seed, shape, chunk, p):
    data = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    norm = fit_normalization(da.from_array(data, chunks=chunk), percentiles=p, max_samples=data.size)
    low, high = np.percentile(data.astype(np.float64), p)
    assert (norm.low, norm.high, norm.percentiles) == (low, high, p)


def test_subsampled_fit_is_close_to_the_whole_array_percentiles_and_reproducible():
    data = da.random.default_rng(1).normal(size=(64, 64, 64), chunks=16).astype(np.float32)
    whole = np.percentile(data.compute(), [0.5, 99.5])
    norm = fit_normalization(data, max_samples=20_000, seed=3)
    # 20k samples: standard error of the 0.5 % quantile of N(0, 1) is about 0.035.
    np.testing.assert_allclose([norm.low, norm.high], whole, atol=0.15)
    assert norm != Normalization(*whole)  # a subsample, not the whole array
    assert fit_normalization(data, max_samples=20_000, seed=3) == norm
    assert fit_normalization(data, max_samples=20_000, seed=4) != norm


def test_fit_is_out_of_core_on_a_2_gib_lazy_array():
    """Every block is made once and never kept: peak memory is a few blocks, not the array."""
    made, lock = [], threading.Lock()

    def fill(block, block_id=None):
        with lock:
            made.append(block_id)
        # Block (i, j, k) holds one value: its linear block index.
        return np.full(block.shape, np.ravel_multi_index(block_id, (16, 4, 4)), dtype=np.float32)

    lazy = da.zeros((32, 4096, 4096), chunks=(2, 1024, 1024), dtype=np.float32).map_blocks(
        fill, meta=np.empty((0, 0, 0), np.float32)
    )
    assert lazy.nbytes == 2 * 2**30 and lazy.npartitions == 256
    tracemalloc.start()
    try:
        # In this process (where tracemalloc sees it), even if another test left a distributed client.
        with dask.config.set(scheduler="threads"):
            norm = fit_normalization(lazy, max_samples=100_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(made) == sorted(np.ndindex(16, 4, 4))  # each block computed exactly once
    assert peak < lazy.nbytes / 16, f"peak traced memory {peak / 2**20:.0f} MiB"
    # 391 samples from each of the 256 constant blocks 0..255: the 0.5 / 99.5 % points fall in blocks 1 and 254.
    assert (norm.low, norm.high) == (1.0, 254.0)


def test_constant_or_non_finite_data_is_refused_at_fit_time():
    with pytest.raises(ConfigError, match="constant"):
        fit_normalization(da.full((8, 8), 7.0, chunks=4))
    with pytest.raises(ConfigError, match="no finite voxel"):
        fit_normalization(da.full((8, 8), np.nan, chunks=4))
    with pytest.raises(ConfigError, match="empty"):
        fit_normalization(da.zeros((0, 8), chunks=4))
    with pytest.raises(ConfigError, match="max_samples"):
        fit_normalization(da.arange(10.0, chunks=5), max_samples=0)


def test_fit_ignores_non_finite_voxels():
    data = np.arange(100, dtype=np.float64)
    data[::10] = np.nan
    norm = fit_normalization(da.from_array(data, chunks=7), percentiles=(0, 100))
    assert (norm.low, norm.high) == (1.0, 99.0)


def test_normalized_module_feeds_the_network_normalized_float32():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x * 2

    x = torch.tensor([[[[0, 50, 100, 200]]]], dtype=torch.int16)
    y = Normalized(Probe(), Normalization(0.0, 100.0))(x)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([[[[0.0, 1.0, 2.0, 2.0]]]]))
    assert torch.equal(Normalized(Probe(), None)(x), x.float() * 2)
    assert list(Normalized(torch.nn.Conv2d(1, 1, 1), Normalization(0, 1)).state_dict()) == [
        "network.weight",
        "network.bias",
    ]


def test_no_data_reads_as_the_darkest_value_in_numpy_and_torch():
    norm = Normalization(low=1.0, high=3.0, percentiles=(1.0, 99.0))
    x = np.array([np.nan, 0.0, 2.0, 5.0], np.float32)
    expected = np.array([0.0, 0.0, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(norm.apply(x), expected)
    np.testing.assert_array_equal(norm.apply(torch.from_numpy(x)).numpy(), expected)
