"""Synthetic TXM-XANES stacks: laziness, determinism, ground truth, writers."""

import tracemalloc

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

from operando.errors import OutputExistsError
from operando.io.layout import label_classes
from operando.io.store import COMPLETE_ATTR, open_dataset
from operando.synth import PATTERNS, make_xanes, synth_xanes, synth_xanes_raw
from operando.synth.xanes import E0_CHARGED, E0_PRISTINE

SHAPE = (3, 12, 128, 128)
PARAMS = dict(shape=SHAPE, seed=5, n_particles=4, n_debris=2)


@pytest.fixture(scope="module")
def phantom():
    data, truth = make_xanes(**PARAMS)
    return data.compute(), truth.compute()


@pytest.fixture(scope="module")
def absorbance(phantom):
    data, _ = phantom
    counts, flat, dark = (data[v].values.astype(np.float64) for v in ("counts", "flat", "dark"))
    return -np.log((counts - dark) / (flat - dark))


def test_make_xanes_stays_lazy_when_huge():
    data, truth = make_xanes(**PARAMS)
    for name in ("counts", "flat", "dark"):
        assert isinstance(data[name].data, da.Array)
    assert isinstance(truth.edge_energy.data, da.Array)
    tracemalloc.start()
    try:
        big, _ = make_xanes(shape=(54, 143, 2048, 2048))  # 121 GiB of uint16 counts
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"building the graph allocated {peak / 2**20:.0f} MiB"
    assert big.counts.shape == (54, 143, 2048, 2048)


def test_layout(phantom):
    data, truth = phantom
    for name in ("counts", "flat", "dark"):
        assert data[name].dims == ("scan", "energy", "y", "x")
        assert data[name].dtype == np.uint16
    energy = data.energy.values
    assert np.all(np.diff(energy) > 0)
    assert 8290 < energy[0] < energy[-1] < 8410
    assert data.attrs["pixel_size_um"] == 0.03
    assert truth.centre_px.dims == ("scan", "energy", "particle", "axis")
    assert label_classes(truth.pattern) == dict(enumerate(PATTERNS))


def test_same_seed_same_data_other_seed_other_data(phantom):
    data, truth = phantom
    again, again_truth = make_xanes(**PARAMS)
    np.testing.assert_array_equal(again.counts.values, data.counts.values)
    np.testing.assert_array_equal(again_truth.centre_px.values, truth.centre_px.values)
    other, _ = make_xanes(**{**PARAMS, "seed": 6})
    assert not np.array_equal(other.counts[0, 0].values, data.counts[0, 0].values)


def test_values_do_not_depend_on_the_chunking(phantom):
    data, truth = phantom
    other, other_truth = make_xanes(**PARAMS, chunks=(1, 5, 50, 77))
    for name in ("counts", "flat", "dark"):
        np.testing.assert_array_equal(other[name].values, data[name].values)
    np.testing.assert_array_equal(other_truth.edge_energy.values, truth.edge_energy.values)
    np.testing.assert_array_equal(other_truth.labels.values, truth.labels.values)


def test_counts_are_poisson_like(phantom):
    data, _ = phantom
    dark = data.dark.values.astype(np.float64)
    # Over frames, each pixel's dark counts vary as much as their mean.
    ratio = dark.reshape(-1, *dark.shape[2:]).var(axis=0) / dark.reshape(-1, *dark.shape[2:]).mean(axis=0)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.2)
    assert data.counts.values.min() > 0
    assert np.all(data.flat.values >= data.counts.values.min())


def test_centres_match_the_centre_of_mass_of_each_object(phantom, absorbance):
    _, truth = phantom
    post_edge = range(SHAPE[1] - 3, SHAPE[1])
    yy, xx = np.mgrid[: SHAPE[2], : SHAPE[3]]
    for k in truth.particle.values[~truth.is_debris.values]:
        reach = truth.radius_px.values[k] * 1.4 + 1
        for s in range(SHAPE[0]):
            for e in post_edge:
                cy, cx = truth.centre_px.values[s, e, k]
                window = np.hypot(yy - cy, xx - cx) < reach
                frame = absorbance[s, e]
                background = np.median(frame[~window])
                mask = window & (frame > background + 0.3)
                found = np.array([yy[mask].mean(), xx[mask].mean()])
                assert np.hypot(*(found - (cy, cx))) < 1.0


def test_motion_is_jitter_plus_a_walk_per_particle(phantom):
    _, truth = phantom
    centre = truth.centre_px.values
    ref = truth.reference_centre_px.values
    jitter = truth.jitter_px.values
    walk = centre - ref - jitter[:, :, None, :]
    debris = truth.is_debris.values
    np.testing.assert_allclose(walk[:, :, debris], 0, atol=1e-12)
    assert np.abs(walk[:, :, ~debris]).max() > 1
    # Particles move independently of each other.
    assert np.abs(np.diff(walk[:, :, ~debris], axis=2)).max() > 0.5
    np.testing.assert_allclose(truth.centre_um, truth.centre_px * 0.03)


def test_edge_energy_maps_follow_their_patterns(phantom):
    _, truth = phantom
    edge = truth.edge_energy.values
    labels = truth.labels.values
    assert np.all(np.isnan(edge[:, labels == 0]))
    for k, pattern in enumerate(truth.pattern.values):
        inside = edge[:, labels == k + 1]
        name = PATTERNS[pattern]
        if name == "debris":
            assert np.all(np.isnan(inside))
            continue
        assert np.all((inside >= E0_PRISTINE - 1e-3) & (inside <= E0_CHARGED + 1e-3))
        if name == "uniform":
            assert np.all(np.ptp(inside, axis=1) < 1e-3)
            assert np.all(np.diff(inside[:, 0]) > 0)
        elif name == "inactive":
            np.testing.assert_allclose(inside, E0_PRISTINE, atol=1e-3)
        else:
            core = inside < E0_PRISTINE + 0.1
            shell = inside > E0_PRISTINE + 0.5
            assert np.all(core.sum(axis=1) > 0) and np.all(shell.sum(axis=1) > 0)
            assert np.all(np.diff(core.sum(axis=1)) < 0)  # the core shrinks


def test_every_pattern_and_debris_present(phantom):
    _, truth = phantom
    assert set(truth.pattern.values) == set(range(len(PATTERNS)))
    debris = truth.is_debris.values
    assert debris.sum() == 2
    areas = np.bincount(truth.labels.values.ravel(), minlength=len(debris) + 1)[1:]
    assert areas[debris].max() < areas[~debris].min()


def test_objects_are_isolated_and_inside_the_field(phantom):
    _, truth = phantom
    centre = truth.centre_px.values
    extent = truth.radius_px.values * 1.4
    assert np.all(centre - extent[:, None] > 0) and np.all(centre + extent[:, None] < SHAPE[2])
    labels = truth.labels.values
    assert labels[0].max() == labels[-1].max() == labels[:, 0].max() == labels[:, -1].max() == 0


def test_contrast_is_poor_below_the_edge(phantom, absorbance):
    _, truth = phantom
    particles = truth.labels.values > 0
    pre = absorbance[0, 0][particles].mean() - absorbance[0, 0][~particles].mean()
    post = absorbance[0, -1][particles].mean() - absorbance[0, -1][~particles].mean()
    assert 0 < pre < post / 3


def test_synth_xanes_writes_data_and_truth(tmp_path):
    params = dict(shape=(2, 6, 64, 64), n_particles=4, n_debris=1, seed=3)
    path = synth_xanes(tmp_path / "x.zarr", **params)
    assert COMPLETE_ATTR in zarr.open_group(str(path), mode="r").attrs
    data = xr.open_zarr(path)
    truth = open_dataset(path, group="truth")
    expected, expected_truth = make_xanes(**params)
    np.testing.assert_array_equal(data.counts.values, expected.counts.values)
    np.testing.assert_array_equal(truth.edge_energy.values, expected_truth.edge_energy.values)
    np.testing.assert_array_equal(truth.is_debris.values, expected_truth.is_debris.values)
    with pytest.raises(OutputExistsError):
        synth_xanes(path, **params)


def test_synth_xanes_raw_writes_scan_major_frames(tmp_path):
    params = dict(shape=(2, 6, 64, 64), n_particles=4, n_debris=1, seed=3)
    out = synth_xanes_raw(tmp_path / "raw", **params)
    data, _ = make_xanes(**params)
    for name, var in (("sample", "counts"), ("flat", "flat"), ("dark", "dark")):
        with tifffile.TiffFile(out / f"{name}.tif") as tf:
            assert len(tf.pages) == 12
        frames = tifffile.imread(out / f"{name}.tif")
        np.testing.assert_array_equal(frames, data[var].values.reshape(12, 64, 64))
    np.testing.assert_allclose(np.loadtxt(out / "energies.txt"), data.energy.values)
    assert open_dataset(out / "truth.zarr").centre_px.shape == (2, 6, 5, 2)
