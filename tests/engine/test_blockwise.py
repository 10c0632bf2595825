"""map_to_zarr: halo kernels equal the whole-array result; shared-chunk plans are refused."""

from __future__ import annotations

import itertools
import tempfile

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.engine.blockwise import check_write_plan, map_to_zarr, plan_tasks, read_region
from operando.engine.cluster import local_cluster
from operando.engine.progress import compute_with_progress
from operando.errors import ShapeMismatchError, SharedChunkWriteError
from operando.io.store import COMPLETE_ATTR, missing_chunks


def mean_filter(block, *, region_in_block, block_origin, size=3):
    """The kernel under test: a plain numpy function, cropped to the output region."""
    return ndi.uniform_filter(block, size, mode="nearest")[region_in_block]


def _arrays(root, data, src_chunks, out_chunks, shards=None, dtype="f8"):
    group = zarr.open_group(str(root), mode="w", zarr_format=3)
    src = group.create_array("src", shape=data.shape, chunks=src_chunks, dtype=data.dtype)
    src[...] = data
    out = group.create_array("out", shape=data.shape, chunks=out_chunks, shards=shards, dtype=dtype)
    return src, out


def test_kernel_alone():
    block = np.arange(25.0).reshape(5, 5)
    got = mean_filter(block, region_in_block=(slice(1, 4), slice(1, 4)), block_origin=(0, 0))
    assert got.shape == (3, 3)
    assert got[1, 1] == pytest.approx(block[1:4, 1:4].mean())


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(3, 24), st.integers(3, 24)),
    chunks=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    size=st.sampled_from([3, 5]),
    extra=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_halo_kernel_equals_whole_array(shape, chunks, size, extra, seed):
    data = np.random.default_rng(seed).random(shape)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = _arrays(f"{tmp}/a.zarr", data, (5, 4), chunks)
        report = map_to_zarr(
            mean_filter, src, out, halo=size // 2 + extra, kernel_kwargs={"size": size}, quiet=True
        )
        np.testing.assert_allclose(out[...], ndi.uniform_filter(data, size, mode="nearest"), rtol=1e-12)
        assert report.chunks_done == report.chunks_total == out.nchunks
        assert COMPLETE_ATTR in out.attrs


@pytest.mark.parametrize(("chunks", "shards"), [((4, 4, 4), None), ((2, 4, 4), (4, 8, 8))])
def test_3d_sharded_and_distributed(tmp_path, client, chunks, shards):
    data = np.random.default_rng(1).random((9, 13, 10)).astype("f4")
    src, out = _arrays(tmp_path / "a.zarr", data, (3, 5, 5), chunks, shards, dtype="f4")
    report = map_to_zarr(mean_filter, src, out, halo=1, client=client, quiet=True)
    np.testing.assert_allclose(out[...], ndi.uniform_filter(data, 3, mode="nearest"), rtol=1e-6)
    assert report.chunks_done == report.chunks_total
    assert report.peak_worker_memory > 0
    assert report.bytes_written > 0


def test_source_by_path(tmp_path):
    data = np.random.default_rng(2).random((10, 10))
    _, out = _arrays(tmp_path / "a.zarr", data, (5, 5), (4, 4))
    map_to_zarr(mean_filter, (tmp_path / "a.zarr", "src"), out, halo=1, quiet=True)
    np.testing.assert_allclose(out[...], ndi.uniform_filter(data, 3, mode="nearest"))


def test_progress_and_log(tmp_path, capsys, caplog):
    data = np.zeros((8, 8))
    src, out = _arrays(tmp_path / "a.zarr", data, (4, 4), (4, 4))
    with caplog.at_level("INFO", logger="operando.engine"):
        map_to_zarr(mean_filter, src, out, halo=1)
    err = capsys.readouterr().err
    assert "\r" in err and "4/4 chunks" in err
    assert "4 chunks done, 0 reused of 4" in caplog.text and "MB/s" in caplog.text
    map_to_zarr(mean_filter, src, out, halo=1, quiet=True)
    assert capsys.readouterr().err == ""


def test_task_count_is_bounded(tmp_path):
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    out = group.create_array("out", shape=(200, 200), chunks=(2, 2), dtype="u1")
    regions = plan_tasks(out, max_tasks=100)
    assert len(regions) <= 100
    check_write_plan(out, regions)


def test_partial_shard_writes_are_refused(tmp_path):
    data = np.zeros((16, 16))
    src, out = _arrays(tmp_path / "a.zarr", data, (4, 4), (4, 4), shards=(8, 8))
    with pytest.raises(
        SharedChunkWriteError,
        match=r"out: task region \[0:4, 0:4\] covers part of a unit \(shard shape \(8, 8\)\)",
    ):
        map_to_zarr(mean_filter, src, out, halo=1, task_shape=(4, 4), quiet=True)
    assert COMPLETE_ATTR not in out.attrs


def test_unaligned_and_overlapping_regions_are_refused(tmp_path):
    src, out = _arrays(tmp_path / "a.zarr", np.zeros((12, 12)), (4, 4), (4, 4))
    with pytest.raises(SharedChunkWriteError, match=r"chunk shape \(4, 4\)"):
        map_to_zarr(mean_filter, src, out, task_shape=(6, 6), quiet=True)
    with pytest.raises(
        SharedChunkWriteError, match=r"task regions \[0:8, 0:12\] and \[4:12, 0:12\] both write"
    ):
        check_write_plan(out, [(slice(0, 8), slice(0, 12)), (slice(4, 12), slice(0, 12))])


def test_bad_kernel_output_and_shapes(tmp_path):
    src, out = _arrays(tmp_path / "a.zarr", np.zeros((8, 8)), (4, 4), (4, 4))
    with pytest.raises(ShapeMismatchError, match="kernel returned shape"):
        map_to_zarr(
            lambda block, *, region_in_block, block_origin: block, src, out, halo=1, retries=0, quiet=True
        )
    assert COMPLETE_ATTR not in out.attrs
    group = zarr.open_group(str(tmp_path / "a.zarr"))
    other = group.create_array("other", shape=(8, 9), chunks=(4, 4), dtype="f8")
    with pytest.raises(ShapeMismatchError, match="differs from output shape"):
        map_to_zarr(mean_filter, src, other, quiet=True)


# ---------------------------------------------------------------- several outputs, shared values


def stats_kernel(block, *, region_in_block, block_origin):
    """Two outputs: the values, and (value, value²) stacked on a leading axis."""
    v = block[region_in_block]
    return v, np.stack([v, v**2])


def test_several_outputs_are_written_by_the_same_tasks(tmp_path):
    data = np.random.default_rng(7).random((13, 10))
    src, out = _arrays(tmp_path / "m.zarr", data, (13, 10), (4, 5))
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    stacked = group.create_array("stacked", shape=(2, 13, 10), chunks=(2, 4, 5), dtype="f8")
    report = map_to_zarr(stats_kernel, src, [out, stacked], quiet=True)
    np.testing.assert_array_equal(out[...], data)
    np.testing.assert_array_equal(stacked[...], np.stack([data, data**2]))
    assert COMPLETE_ATTR in out.attrs and COMPLETE_ATTR in stacked.attrs
    stacked[1, :4, :5] = -1.0  # tamper with one unit of the second output only: it is redone
    again = map_to_zarr(stats_kernel, src, [out, stacked], quiet=True)
    assert (again.chunks_done, again.chunks_reused) == (1, report.chunks_total - 1)
    np.testing.assert_array_equal(stacked[...], np.stack([data, data**2]))


def test_chunks_of_only_the_fill_value_are_stored(tmp_path):
    """An all-background label chunk is written, so the store can be marked complete."""
    data = np.zeros((8, 8), np.uint8)
    data[:4, :4] = 3
    src, out = _arrays(tmp_path / "f.zarr", data, (8, 8), (4, 4), dtype="u1")
    map_to_zarr(mean_filter, src, out, halo=1, quiet=True)
    assert out.nchunks_initialized == 4
    np.testing.assert_array_equal(out[...], ndi.uniform_filter(data, 3, mode="nearest"))
    assert missing_chunks(tmp_path / "f.zarr") == {}


def test_a_further_output_must_extend_the_unit(tmp_path):
    data = np.zeros((8, 8))
    src, out = _arrays(tmp_path / "u.zarr", data, (8, 8), (4, 4))
    group = zarr.open_group(str(tmp_path / "u.zarr"), mode="r+")
    split = group.create_array("split", shape=(2, 8, 8), chunks=(1, 4, 4), dtype="f8")
    with pytest.raises(ShapeMismatchError, match=r"unit \(1, 4, 4\) does not extend"):
        map_to_zarr(stats_kernel, src, [out, split], quiet=True)


_UNPICKLED = {"count": 0}


def _count_unpickle(data: np.ndarray) -> CountedArray:
    _UNPICKLED["count"] += 1
    return CountedArray(data)


class CountedArray:
    """A large value that counts, per process, how many times it was unpickled."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __reduce__(self):
        return _count_unpickle, (self.data,)


def unpickle_count_kernel(block, *, region_in_block, block_origin, weights):
    return np.full(block[region_in_block].shape, _UNPICKLED["count"], dtype=np.int64)


def test_shared_values_reach_each_worker_once(tmp_path, client):
    src, out = _arrays(tmp_path / "s.zarr", np.zeros((32, 32)), (32, 32), (4, 4), dtype="i8")
    weights = CountedArray(np.ones(2_000_000, np.float32))  # 8 MB, like a small model
    report = map_to_zarr(unpickle_count_kernel, src, out, shared={"weights": weights}, client=client)
    assert report.chunks_done == 64
    # 64 tasks on 2 workers: sent with each task, a worker would have unpickled it dozens of times.
    assert out[...].max() == 1


def sleepy_kernel(block, *, region_in_block, block_origin, log_dir):
    import os
    import time

    start = time.time()
    time.sleep(0.15)
    (log_dir / f"{os.getpid()}-{block_origin}").write_text(f"{start} {time.time()}")
    return block[region_in_block]


def test_resources_limit_concurrent_tasks_per_worker(tmp_path):
    """A worker with 2 threads but one GPU runs GPU tasks one at a time."""
    distributed = pytest.importorskip("distributed")
    src, out = _arrays(tmp_path / "r.zarr", np.zeros((4, 8)), (4, 8), (1, 8))
    with (
        local_cluster(
            n_workers=1, threads_per_worker=2, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        map_to_zarr(
            sleepy_kernel, src, out, kernel_kwargs={"log_dir": tmp_path}, client=c, resources={"GPU": 1}
        )
    spans = sorted(tuple(map(float, p.read_text().split())) for p in tmp_path.glob("*-(*"))
    assert len(spans) == 4
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize("distributed_run", [False, True])
def test_compute_with_progress_counts_chunk_writes(tmp_path, capsys, client, distributed_run):
    import dask.array as da

    data = np.random.default_rng(9).random((12, 10))
    target = zarr.create_array(store=str(tmp_path / "w.zarr"), shape=data.shape, chunks=(4, 5), dtype="f8")
    writes = da.from_array(data, chunks=(4, 5)).store(target, compute=False, lock=False)
    report = compute_with_progress(writes, name="w", client=client if distributed_run else None)
    assert (report.chunks_done, report.chunks_total) == (6, 6)
    assert (
        capsys.readouterr().err.rstrip().endswith("w [##############################] 6/6 chunks (0 reused)")
    )
    np.testing.assert_array_equal(target[...], data)


@st.composite
def _regions(draw):
    shape = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    chunks = [draw(st.integers(1, n)) for n in shape]
    region = []
    for n in shape:
        if draw(st.booleans()):
            region.append(draw(st.integers(0, n - 1)))
        else:
            a = draw(st.integers(0, n))
            region.append(slice(a, draw(st.integers(a, n))))
    return tuple(shape), tuple(chunks), tuple(region)


@settings(max_examples=60, deadline=None)
@given(_regions())
def test_read_region_equals_zarrs_own_selection(case):
    shape, chunks, region = case
    data = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    with tempfile.TemporaryDirectory() as tmp:
        source = zarr.create_array(f"{tmp}/a", shape=shape, chunks=chunks, dtype=np.int32)
        source[...] = data
        got = read_region(source, region)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, data[region])
