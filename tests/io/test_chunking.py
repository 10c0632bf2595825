"""The chunking policy: properties its docstring promises, over shapes, dtypes and dims."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.io.chunking import MAX_CHUNK_BYTES, choose_chunks

MIB = 2**20
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.complex128])
LENGTHS = st.integers(1, 5000)
SPATIAL = ("z", "y", "x")


@st.composite
def arrays(draw):
    """(shape, dtype, dims) of a CT or XANES-like array, or a bare spatial one."""
    kind = draw(st.sampled_from(["ct", "xanes", "spatial"]))
    nspatial = draw(st.integers(1, 3))
    dims = SPATIAL[-nspatial:]
    if kind == "ct":
        dims = ("time", *dims)
    elif kind == "xanes":
        dims = ("scan", "energy", *dims)
    shape = tuple(draw(LENGTHS) for _ in dims)
    return shape, np.dtype(draw(DTYPES)), dims


def nbytes(chunks, dtype) -> int:
    return math.prod(chunks) * np.dtype(dtype).itemsize


@settings(max_examples=400, deadline=None)
@given(arrays(), st.integers(1, 64))
def test_chunk_rules(arr, energy_chunk):
    shape, dtype, dims = arr
    chunks = choose_chunks(shape, dtype, dims, energy_chunk=energy_chunk)
    assert len(chunks) == len(shape)
    for c, n, d in zip(chunks, shape, dims, strict=True):
        assert 1 <= c <= n
        if d in ("time", "scan"):
            assert c == 1
        if d == "energy":
            assert c == min(n, energy_chunk)
    assert nbytes(chunks, dtype) <= MAX_CHUNK_BYTES


@settings(max_examples=200, deadline=None)
@given(arrays(), st.floats(1, 4096))
def test_never_above_128_mib_whatever_the_target(arr, target_mib):
    shape, dtype, dims = arr
    chunks = choose_chunks(shape, dtype, dims, target_mib=target_mib)
    assert nbytes(chunks, dtype) <= MAX_CHUNK_BYTES
    assert nbytes(chunks, dtype) <= max(target_mib * MIB, nbytes([1] * len(shape), dtype) * 16)


@settings(max_examples=300, deadline=None)
@given(arrays())
def test_large_arrays_get_at_least_64_mib(arr):
    """A chunk is at least 64 MiB (default target 96) when one time step / scan is ≥ 256 MiB."""
    shape, dtype, dims = arr
    fixed = {"time": 1, "scan": 1, "energy": 16}
    unit = math.prod(min(n, fixed.get(d, n)) for n, d in zip(shape, dims, strict=True))
    if unit * dtype.itemsize < 256 * MIB:
        return
    chunks = choose_chunks(shape, dtype, dims)
    assert 64 * MIB <= nbytes(chunks, dtype) <= 96 * MIB


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_spatial_cube_chunks_fill_the_target(dtype):
    # Rounding all three edges down to 64 used to give 62.5 MiB (uint16) and 54 MiB (float64).
    chunks = choose_chunks((1, 2048, 2048, 2048), dtype, ("time", "z", "y", "x"))
    assert chunks[0] == 1
    assert all(c % 64 == 0 for c in chunks[1:])
    assert max(chunks[1:]) - min(chunks[1:]) <= 64
    assert 80 * MIB <= nbytes(chunks, dtype) <= 96 * MIB


def test_short_dims_are_taken_whole():
    chunks = choose_chunks((10, 7, 4000, 4000), np.float32, ("time", "z", "y", "x"))
    assert chunks[:2] == (1, 7)
    assert chunks[2] % 64 == 0 and chunks[3] % 64 == 0
    assert 64 * MIB <= nbytes(chunks, np.float32) <= 96 * MIB


def test_small_array_is_one_chunk_per_step():
    assert choose_chunks((5, 30, 40, 50), np.float32, ("time", "z", "y", "x")) == (1, 30, 40, 50)
    assert choose_chunks((2, 143, 64, 64), np.float32, ("scan", "energy", "y", "x")) == (1, 16, 64, 64)


def test_target_mib_scales_the_chunk():
    small = choose_chunks((1, 2048, 2048, 2048), np.float32, ("time", "z", "y", "x"), target_mib=8)
    assert 4 * MIB <= nbytes(small, np.float32) <= 8 * MIB


def test_shape_and_dims_must_match():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) and dims \('x',\) differ in length"):
        choose_chunks((2, 3), np.float32, ("x",))
