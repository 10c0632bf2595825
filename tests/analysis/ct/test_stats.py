"""Cell statistics on the CT phantom and against a numpy oracle (operando.analysis.ct.stats)."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from operando.analysis.ct import stats
from operando.analysis.ct.regions import ROLES, SPLIT_CLASSES
from operando.analysis.ct.stats import cell_statistics, write_stats
from operando.errors import (
    AxisError,
    ClassNameError,
    ConfigError,
    CropError,
    OutputExistsError,
    UnsupportedDtypeError,
)
from operando.io.layout import label_attrs
from operando.synth.ct import make_ct

VOXEL = 1.33
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")


@pytest.fixture(scope="module")
def phantom():
    _, truth = make_ct(shape=(3, 48, 64, 64), max_angle_deg=0, max_shift_voxels=0, chunks=(1, 16, 32, 32))
    labels = truth["labels"]
    labels.attrs["voxel_size_um"] = VOXEL
    with dask.config.set(scheduler="threads"):
        ds = cell_statistics(labels)
        return labels, truth.compute(), ds, labels.values


def test_split_keeps_the_phantom_counts(phantom):
    _, truth, ds, _ = phantom
    v = ds["voxels"].to_pandas()
    count = truth["voxel_count"].values
    assert (v["background"].values == count[:, 0]).all()
    assert ((v["stripping_electrode"] + v["plating_electrode"]).values == count[:, 1]).all()
    assert ((v["deposited_li"] + v["redeposited_li"]).values == count[:, 2]).all()
    assert (v["dendrite"].values == count[:, 3]).all() and (v["pit"].values == count[:, 4]).all()
    assert v["deposited_li"].iloc[1] > 0 and v["redeposited_li"].iloc[2] > 0
    assert ds.attrs["plating_side"] == "high" and ds.attrs["normal_axis"] == "z"


def test_split_plane_separates_the_electrodes(phantom):
    _, truth, ds, volume = phantom
    z = np.arange(volume.shape[1]) * VOXEL
    for t, plane in enumerate(ds.attrs["split_plane_um"]):
        assert truth["surface_stripping_um"][t] < plane < truth["surface_plating_um"][t]
        electrode_z = z[np.nonzero(volume[t] == 1)[0]]
        below = np.count_nonzero(electrode_z < plane)
        assert below == ds["voxels"].sel({"class": "stripping_electrode"})[t]
        # No electrode near the plane: every stripping voxel lies below, every plating voxel above.
        assert electrode_z[electrode_z < plane].max() < plane - 2 * VOXEL < plane + 2 * VOXEL
        assert electrode_z[electrode_z > plane].min() > plane + 2 * VOXEL


def test_thickness_maps_and_fractions(phantom):
    _, _, ds, _ = phantom
    area = 64 * 64 * VOXEL**2
    np.testing.assert_allclose(ds["thickness_um"], ds["volume_um3"] / area)
    np.testing.assert_allclose(ds["volume_um3"], ds["voxels"] * VOXEL**3)
    np.testing.assert_allclose(ds["thickness_map_um"].sum(("y", "x")) * VOXEL**2, ds["volume_um3"], rtol=1e-5)
    occupied = (ds["thickness_map_um"].values > 0).mean(axis=(2, 3))
    np.testing.assert_allclose(ds["area_fraction"], occupied)
    np.testing.assert_allclose(ds["density_map"] * 48 * VOXEL, ds["thickness_map_um"], rtol=1e-5)
    sides = ds["side_thickness_um"].sel(side="plating")
    expected = ds["thickness_um"].sel({"class": ["plating_electrode", "deposited_li"]}).sum("class")
    np.testing.assert_allclose(sides, expected)
    np.testing.assert_array_equal(ds["void_map_um"], ds["thickness_map_um"].sel({"class": "pit"})[-1])


def test_colocalization_is_pearson_r(phantom):
    _, _, ds, _ = phantom
    assert ds["colocalization"].dims == ("time", "pair")
    for t in (1, 2):
        for pair in ds["pair"].values:
            a, b = (ds["thickness_map_um"].sel({"class": c})[t].values.ravel() for c in pair.split("~"))
            r = ds["colocalization"].sel(pair=pair)[t]
            np.testing.assert_allclose(r, np.corrcoef(a, b)[0, 1], rtol=1e-4, atol=1e-6)


def test_edges_follow_the_phantom_surfaces(phantom):
    _, truth, ds, _ = phantom
    strip, plate = ds["edge_mean_um"].sel(side="stripping"), ds["edge_mean_um"].sel(side="plating")
    assert np.abs(strip - truth["surface_stripping_um"]).max() < VOXEL
    assert np.abs(plate - truth["surface_plating_um"]).max() < VOXEL
    swelling = truth["gap_um"] - truth["gap_um"][0]
    assert np.abs(ds["gap_um"] - ds["gap_um"][0] - swelling).max() < VOXEL
    assert swelling[-1] > 2 * VOXEL
    np.testing.assert_allclose(ds["edge_displacement_um"][0], 0)


def test_crop_matches_cropped_counts(phantom):
    labels, _, _, volume = phantom
    with dask.config.set(scheduler="threads"):
        ds = cell_statistics(labels, crop="y=8:-8,x=:40")
    assert ds.sizes["y"] == 48 and ds.sizes["x"] == 40
    np.testing.assert_allclose(ds["y"][0], 8 * VOXEL)
    part = volume[:, :, 8:-8, :40]
    total = ds["voxels"].sel({"class": ["stripping_electrode", "plating_electrode"]}).sum("class")
    assert (total.values == (part == 1).sum(axis=(1, 2, 3))).all()
    np.testing.assert_allclose(ds["thickness_um"], ds["volume_um3"] / (48 * 40 * VOXEL**2))
    assert ds.attrs["crop"] == "y=8:-8,x=:40"


def test_bad_input_errors(phantom):
    labels = phantom[0]
    renamed = labels.copy()
    renamed.attrs = {**labels.attrs, **label_attrs(["background", "electrode", "li", "dendrite", "pit"])}
    with pytest.raises(ClassNameError, match=r"missing classes \['deposited'\].*'li'"):
        cell_statistics(renamed)
    with pytest.raises(AxisError, match="'w' is not a spatial dimension"):
        cell_statistics(labels, normal_axis="w")
    with pytest.raises(CropError, match="selects nothing inside x's 64"):
        cell_statistics(labels, crop="x=64:70")
    with pytest.raises(ClassNameError, match="unknown classes \\['void'\\]"):
        cell_statistics(labels, colocalize=[("void", "pit")])
    with pytest.raises(ConfigError, match="'up' is not 'auto', 'high' or 'low'"):
        cell_statistics(labels, plating_side="up")
    with pytest.raises(ConfigError, match=r"'auto' is known only after the pass.*plating_side='high'"):
        cell_statistics(labels, compute=False)
    with pytest.raises(UnsupportedDtypeError, match=r"data type uint16: .*uint8.*astype\('uint8'\)"):
        cell_statistics(labels.astype(np.uint16))


def _layered(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Random labels: electrodes in the outer quarters, random classes and stray electrode between."""
    t, z, y, x = shape
    out = rng.choice(np.array([0, 0, 2, 3, 4], np.uint8), size=shape)
    out[:, : z // 4] = rng.choice(np.array([1, 1, 1, 4], np.uint8), size=(t, z // 4, y, x))
    out[:, -(z // 4) :] = 1
    out[rng.random(shape) < 0.05] = 1
    return out


def _oracle(volume: np.ndarray, planes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Column counts (T, 7, Y, X) and faces (T, 2, Y, X) in voxels, by plain numpy."""
    nz = volume.shape[1]
    z = np.arange(nz)[None, :, None, None]
    below = z < np.array(planes)[:, None, None, None]
    split = np.select(
        [volume == 0, (volume == 1) & below, volume == 1, (volume == 2) & ~below, volume == 2, volume == 3],
        [0, 1, 2, 3, 4, 5],
        6,
    )
    counts = np.stack([(split == c).sum(axis=1) for c in range(7)], axis=1)
    face = (volume == 1) | (volume == 4)
    low = np.where(face & below, z, -1).max(axis=1).astype(float)
    high = np.where(face & ~below, z, nz).min(axis=1).astype(float)
    low[low < 0], high[high >= nz] = np.nan, np.nan
    return counts, np.stack([low, high], axis=1)


def _as_labels(volume: np.ndarray, chunks) -> xr.DataArray:
    coords = {d: np.arange(n) * VOXEL for d, n in zip("zyx", volume.shape[1:], strict=True)}
    attrs = {
        **label_attrs(["background", "electrode", "deposited", "dendrite", "pit"]),
        "voxel_size_um": VOXEL,
    }
    return xr.DataArray(
        da.from_array(volume, chunks=chunks),
        dims=("time", "z", "y", "x"),
        coords={"time": [0.0, 10.0], **coords},
        attrs=attrs,
    )


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    seed=st.integers(0, 2**16),
    chunks=st.tuples(st.integers(1, 2), st.integers(1, 16), st.integers(3, 7), st.integers(2, 5)),
)
def test_matches_numpy_oracle_for_any_chunking(seed, chunks):
    volume = _layered(np.random.default_rng(seed), (2, 16, 7, 5))
    with dask.config.set(scheduler="sync"):
        ds = cell_statistics(_as_labels(volume, chunks), plating_side="high")
    planes = [int(np.searchsorted(np.arange(16) * VOXEL, p)) for p in ds.attrs["split_plane_um"]]
    counts, faces = _oracle(volume, planes)
    np.testing.assert_array_equal(ds["voxels"], counts.sum(axis=(2, 3)))
    np.testing.assert_allclose(ds["thickness_map_um"], counts * VOXEL, rtol=1e-6)
    np.testing.assert_allclose(ds["edge_um"], faces * VOXEL, rtol=1e-6)
    np.testing.assert_allclose(ds["area_fraction"], (counts > 0).mean(axis=(2, 3)))


@pytest.mark.parametrize("budget", [1, 8 * 7 * 5])
def test_tall_chunk_columns_are_cut_into_groups_with_the_same_result(monkeypatch, budget):
    """A task holds at most _COLUMN_TASK_BYTES of labels: a column in 4 or 2 groups, merged."""
    monkeypatch.setattr(stats, "_COLUMN_TASK_BYTES", budget)
    volume = _layered(np.random.default_rng(4), (2, 16, 7, 5))
    labels = _as_labels(volume, (1, 4, 7, 5))
    assert len(stats._z_groups(labels.data)) == (4 if budget == 1 else 2)
    with dask.config.set(scheduler="sync"):
        ds = cell_statistics(labels, plating_side="high")
    planes = [int(np.searchsorted(np.arange(16) * VOXEL, p)) for p in ds.attrs["split_plane_um"]]
    counts, faces = _oracle(volume, planes)
    np.testing.assert_array_equal(ds["voxels"], counts.sum(axis=(2, 3)))
    np.testing.assert_allclose(ds["edge_um"], faces * VOXEL, rtol=1e-6)


def _counted_labels(volume: np.ndarray) -> tuple[xr.DataArray, Counter]:
    """Labels whose chunks (4³, one timestep) count their reads."""
    reads: Counter = Counter()
    lock = threading.Lock()

    def load(block_info=None):
        loc = block_info[None]["array-location"]
        with lock:
            reads[tuple(a for a, _ in loc)] += 1
        return volume[tuple(slice(a, b) for a, b in loc)]

    chunks = ((1,) * volume.shape[0], *((4,) * (n // 4) for n in volume.shape[1:]))
    source = da.map_blocks(load, chunks=chunks, dtype=np.uint8)
    return _as_labels(volume, volume.shape).copy(data=source), reads


def test_computed_statistics_read_each_chunk_once():
    """The split's sampled chunks are shared with the full pass (one graph), not read again."""
    volume = _layered(np.random.default_rng(1), (2, 16, 12, 12))
    labels, reads = _counted_labels(volume)
    with dask.config.set(scheduler="threads"):
        ds = cell_statistics(labels, plating_side="high")
    assert len(reads) == 2 * 4 * 3 * 3 and set(reads.values()) == {1}
    reference = cell_statistics(_as_labels(volume, volume.shape), plating_side="high")
    xr.testing.assert_identical(ds, reference)


def test_lazy_statistics_read_the_sample_first_then_each_chunk_once():
    volume = _layered(np.random.default_rng(1), (2, 16, 12, 12))
    labels, reads = _counted_labels(volume)
    with dask.config.set(scheduler="threads"):
        lazy = cell_statistics(labels, plating_side="high", compute=False)
        sampled = sum(reads.values())  # the cheap pass: the middle chunk column only
        assert sampled == 2 * 4 * 1 * 1
        assert isinstance(lazy["thickness_map_um"].data, da.Array)
        ds = lazy.compute()
    assert len(reads) == 2 * 4 * 3 * 3 and sum(reads.values()) == 2 * 4 * 3 * 3 + sampled
    counts, _ = _oracle(
        volume, [int(np.searchsorted(np.arange(16) * VOXEL, p)) for p in ds.attrs["split_plane_um"]]
    )
    np.testing.assert_array_equal(ds["voxels"], counts.sum(axis=(2, 3)))


def test_maps_are_lazy_plane_views_of_the_counts(phantom):
    """Computed statistics hold no float copies of the maps: one plane per chunk, values from the counts."""
    ds = phantom[2]
    for name in ("thickness_map_um", "density_map"):
        assert isinstance(ds[name].data, da.Array) and ds[name].data.chunksize == (1, 1, 64, 64)
    voxels = ds["thickness_map_um"].sum(("y", "x")).values / VOXEL
    np.testing.assert_allclose(voxels, ds["voxels"].values, rtol=1e-5)
    np.testing.assert_allclose(ds["density_map"] * 48, ds["thickness_map_um"] / VOXEL, rtol=1e-6)


def test_write_stats(phantom, tmp_path):
    ds = phantom[2]
    out = write_stats(ds, tmp_path / "stats")
    assert zarr.open_array(out / "maps.zarr" / "thickness_map_um", mode="r").chunks == (1, 1, 64, 64)
    table = pd.read_csv(out / "stats.csv")
    assert list(table.columns) == ["time", "class", "voxels", "volume_um3", "thickness_um"]
    assert len(table) == 3 * len(SPLIT_CLASSES) and set(table["time"]) == {0.0, 120.0, 240.0}
    sides = pd.read_csv(out / "sides.csv")
    assert list(sides.columns) == [
        "time",
        "side",
        "thickness_um",
        "edge_mean_um",
        "edge_displacement_um",
        "gap_um",
    ]
    assert len(pd.read_csv(out / "colocalization.csv")) == 3 * 2
    back = xr.open_zarr(out / "maps.zarr", consolidated=False)
    np.testing.assert_allclose(back["thickness_map_um"], ds["thickness_map_um"])
    with pytest.raises(OutputExistsError, match="holds"):
        write_stats(ds, out)
    write_stats(ds, out, overwrite=True)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    alphabet=st.sampled_from([(0, 1, 1, 2, 3, 4), (0, 1), (1,), (0,), (4,), (0, 4), (2, 3), (1, 4)]),
    shuffle_values=st.booleans(),  # roles on other label values than 0-4 in order
    depth=st.sampled_from([1, 3, 17, 300]),  # 300: runs longer than a uint8 holds
    z0=st.integers(0, 40),
    cut=st.integers(-2, 310),
    width=st.sampled_from([(1, 5), (3, 4), (4, 4), (5, 7)]),  # columns: tail only, word + tail, 2 words, …
    layered=st.booleans(),  # runs of equal slices, as layers along the normal
    borders=st.lists(st.integers(1, 299), max_size=4),  # the column's chunk borders: runs go on across them
)
def test_chunk_kernel_matches_numpy(seed, alphabet, shuffle_values, depth, z0, cut, width, layered, borders):
    """The column kernel (runs found eight columns at a time) against the numpy oracle, plane anywhere."""
    rng = np.random.default_rng(seed)
    block = rng.choice(np.array(alphabet, np.uint8), size=(1, depth, *width))
    if layered:  # each slice repeated a random number of times, in order
        block = block[:, np.sort(rng.integers(0, max(1, depth // 4), depth))]
    n_total = z0 + depth + 5
    volume = np.zeros((1, n_total, *width), np.uint8)
    volume[:, z0 : z0 + depth] = block
    plane = z0 + cut
    value_of = rng.permutation(5).astype(np.uint8) if shuffle_values else np.arange(5, dtype=np.uint8)
    roles = dict(zip(ROLES, value_of.tolist(), strict=True))
    edges = [0, *sorted({b for b in borders if b < depth}), depth]
    chunks = [value_of[block[:, a:b]] for a, b in itertools.pairwise(edges)]
    starts = tuple(z0 + a for a in edges[:-1])
    out = stats._columns_kernel(chunks, np.array([plane]), roles=roles, starts=starts, n_total=n_total)[
        :, None
    ]
    counts, faces = _oracle(volume, [int(np.clip(plane, 0, n_total))])
    # The oracle names the low side stripping; the kernel counts by side (background is the rest).
    low_high = [SPLIT_CLASSES.index(c) for c in ("stripping_electrode", "plating_electrode")]
    low_high += [SPLIT_CLASSES.index(c) for c in ("redeposited_li", "deposited_li", "dendrite", "pit")]
    np.testing.assert_array_equal(out[:, 0, :6], counts[:, low_high])
    low = np.where(np.isnan(faces[:, 0]), 0, faces[:, 0] + 1)
    high = np.where(np.isnan(faces[:, 1]), 0, n_total - faces[:, 1])
    np.testing.assert_array_equal(out[:, 0, 6], low)
    np.testing.assert_array_equal(out[:, 0, 7], high)


@pytest.mark.parametrize("budget", [None, 2 * 16**3])
def test_column_chunks_read_whole_columns_with_the_same_statistics(phantom, tmp_path, monkeypatch, budget):
    """Reopened in whole columns along the normal (or two on-disk chunks under a small budget)."""
    from operando.io.store import open_dataset, write_dataset

    labels, _, want, _ = phantom
    store = tmp_path / "seg.zarr"
    write_dataset(labels.to_dataset(name="labels"), store, target_mib=16**3 / 2**20)
    on_disk = open_dataset(store)["labels"]
    assert on_disk.data.chunksize == (1, 16, 16, 16)
    if budget:
        monkeypatch.setattr(stats, "_COLUMN_TASK_BYTES", budget)
    chunks = stats.column_chunks(on_disk)
    assert chunks == {"z": 48 if budget is None else 32}
    columns = open_dataset(store, chunks=chunks)["labels"]
    assert columns.data.chunks[1] == ((48,) if budget is None else (32, 16))
    assert columns.data.chunks[2:] == on_disk.data.chunks[2:]
    with dask.config.set(scheduler="threads"):
        got = cell_statistics(columns)
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs())
    assert got.attrs["split_plane_um"] == want.attrs["split_plane_um"]


def test_map_planes_are_views_of_the_reduced_counts_not_a_copy():
    counts = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    planes = stats._plane_views(counts)
    assert planes.chunks == ((1, 1), (1, 1, 1), (4,), (5,)) and planes.dtype == np.uint16
    np.testing.assert_array_equal(planes.compute(), counts)
    held = [v for v in dict(planes.__dask_graph__()).values() if isinstance(v, np.ndarray)]
    assert len(held) == 1 and held[0] is counts
