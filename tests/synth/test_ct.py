"""Synthetic CT of a Li-metal symmetric cell: laziness, determinism, ground truth, writers."""

import tracemalloc
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr
from scipy import ndimage

from operando.errors import OutputExistsError
from operando.io.layout import label_classes
from operando.io.store import COMPLETE_ATTR, open_dataset
from operando.synth import CT_CLASSES, make_ct, synth_ct, synth_ct_raw
from operando.synth.ct import CLASS_INTENSITY, cell_geometry, cell_labels, cell_texture

SHAPE = (6, 40, 48, 48)
PARAMS = dict(shape=SHAPE, seed=7, voxel_size_um=1.33)


@pytest.fixture(scope="module")
def phantom():
    data, truth = make_ct(**PARAMS)
    return data.compute(), truth.compute()


def test_make_ct_stays_lazy():
    data, truth = make_ct(**PARAMS)
    assert isinstance(data.intensity.data, da.Array)
    assert isinstance(truth.labels.data, da.Array)
    assert isinstance(truth.volume_um3.data, da.Array)


def test_graph_of_a_huge_phantom_builds_without_making_its_voxels():
    # The paper's scale (25 × 2048³ float32 = 800 GiB): only per-column surfaces (2048² planes) are made.
    tracemalloc.start()
    try:
        data, truth = make_ct(shape=(25, 2048, 2048, 2048))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"building the graph allocated {peak / 2**20:.0f} MiB"
    assert data.intensity.shape == (25, 2048, 2048, 2048)
    assert data.intensity.dtype == np.float32
    assert truth.labels.dtype == np.uint8


def test_layout_and_classes(phantom):
    data, truth = phantom
    assert data.intensity.dims == ("time", "z", "y", "x")
    assert data.attrs["voxel_size_um"] == 1.33
    assert np.all(np.diff(data.time.values) > 0)
    assert label_classes(truth.labels) == dict(enumerate(CT_CLASSES))
    assert CT_CLASSES == ("background", "electrode", "deposited", "dendrite", "pit")


def test_same_seed_same_data_other_seed_other_data(phantom):
    data, truth = phantom
    again, again_truth = make_ct(**PARAMS)
    np.testing.assert_array_equal(again.intensity.values, data.intensity.values)
    np.testing.assert_array_equal(again_truth.labels.values, truth.labels.values)
    other, _ = make_ct(**{**PARAMS, "seed": 8})
    assert not np.array_equal(other.intensity[0].values, data.intensity[0].values)


def test_values_do_not_depend_on_the_chunking(phantom):
    data, truth = phantom
    for chunks in [(1, 13, 20, 48), (2, 40, 48, 17)]:
        other, other_truth = make_ct(**PARAMS, chunks=chunks)
        assert other.intensity.data.chunks != data.intensity.shape
        np.testing.assert_array_equal(other.intensity.values, data.intensity.values)
        np.testing.assert_array_equal(other_truth.labels.values, truth.labels.values)
        np.testing.assert_array_equal(other_truth.voxel_count.values, truth.voxel_count.values)


def test_truth_volumes_are_label_counts_times_voxel_volume(phantom):
    _, truth = phantom
    labels = truth.labels.values
    for t in range(SHAPE[0]):
        counts = np.bincount(labels[t].ravel(), minlength=len(CT_CLASSES))
        np.testing.assert_array_equal(truth.voxel_count[t].values, counts)
    np.testing.assert_allclose(truth.volume_um3.values, truth.voxel_count.values * 1.33**3)
    assert np.all(truth.voxel_count.sum("class").values == np.prod(SHAPE[1:]))


def test_last_timestep_is_the_reference(phantom):
    data, truth = phantom
    assert np.all(truth.angles_deg[-1].values == 0) and np.all(truth.translation_um[-1].values == 0)
    assert data.attrs["reference_time_index"] == SHAPE[0] - 1
    assert np.abs(truth.angles_deg.values).max() <= 1.0
    assert np.abs(truth.angles_deg[:-1].values).min(axis=1).max() > 0


def _residual(image, labels, where):
    return np.abs(image - CLASS_INTENSITY[labels])[where].mean()


def test_misalignment_is_real(phantom):
    """Data at t match the truth labels moved by t's rigid motion, not the unmoved ones."""
    from operando.synth.ct import cell_geometry

    data, truth = phantom
    cell = cell_geometry(SHAPE, seed=7, times_min=data.time.values, charge_end_min=data.time.values[-1] / 2)
    for t in range(SHAPE[0]):
        moved = cell_labels(cell, t, (0, 0, 0), SHAPE[1:], moved=True)
        ref = truth.labels[t].values
        image = data.intensity[t].values
        if t == SHAPE[0] - 1:
            np.testing.assert_array_equal(moved, ref)
        else:
            differ = moved != ref
            assert differ.mean() > 0.01
            assert _residual(image, moved, differ) < 0.6 * _residual(image, ref, differ)


def test_charge_then_discharge(phantom):
    _, truth = phantom
    vol = truth.volume_um3
    charge = truth.charge_fraction.values
    charging = np.flatnonzero(truth.discharge_fraction.values == 0)
    charged = np.flatnonzero(charge == 1)
    deposited, pit, dendrite = (
        vol.sel({"class": CT_CLASSES.index(c)}).values for c in ("deposited", "pit", "dendrite")
    )
    assert charge[0] == 0 and pit[0] == 0 and deposited[0] == 0 and dendrite[0] == 0
    assert np.all(np.diff(deposited[charging]) > 0)
    assert np.all(np.diff(pit[charging]) > 0)
    assert np.all(np.diff(dendrite[charging]) > 0)
    # Redeposited Li fills the pits on discharge.
    assert len(charged) > 1 and truth.discharge_fraction.values[charged[-1]] == 1
    assert np.all(np.diff(pit[charged]) < 0)
    assert pit[-1] < 0.5 * pit.max()


def test_redeposited_li_sits_on_the_stripping_side(phantom):
    _, truth = phantom
    labels = truth.labels.values
    middle = SHAPE[1] // 2
    deposited = CT_CLASSES.index("deposited")
    assert np.sum(labels[0, :middle] == deposited) == 0
    assert np.sum(labels[-1, :middle] == deposited) > 0  # redeposited, low z
    assert np.sum(labels[2, middle:] == deposited) > 0  # deposited on the plating side


def test_cell_swells_during_charge(phantom):
    _, truth = phantom
    gap = truth.gap_um.values
    assert gap[-1] - gap[0] > 2 * 1.33
    charging = truth.discharge_fraction.values == 0
    assert np.all(np.diff(gap[charging]) > 0)
    np.testing.assert_allclose(gap, truth.surface_plating_um - truth.surface_stripping_um)
    # The labels agree: the plating electrode starts further out at the end.
    labels = truth.labels.values
    electrode = CT_CLASSES.index("electrode")
    top = SHAPE[1] - np.sum(labels[:, SHAPE[1] // 2 :] == electrode, axis=1).mean(axis=(1, 2))
    assert top[-1] - top[0] > 2


def test_li_contrast_is_low_and_pits_are_dark():
    li = CLASS_INTENSITY[[0, 1, 2, 3]]
    assert np.ptp(li) < 0.1
    assert CLASS_INTENSITY[4] < li.min() - 0.2


def test_synth_ct_writes_data_and_truth(tmp_path):
    path = synth_ct(tmp_path / "ct.zarr", shape=(3, 24, 32, 32), seed=1)
    root = zarr.open_group(str(path), mode="r")
    assert COMPLETE_ATTR in root.attrs
    assert "truth" in dict(root.groups())
    data = xr.open_zarr(path)
    truth = open_dataset(path, group="truth")
    expected, expected_truth = make_ct(shape=(3, 24, 32, 32), seed=1)
    np.testing.assert_array_equal(data.intensity.values, expected.intensity.values)
    np.testing.assert_array_equal(truth.labels.values, expected_truth.labels.values)
    assert label_classes(truth.labels) == dict(enumerate(CT_CLASSES))
    assert truth.labels.dtype == np.uint8
    with pytest.raises(OutputExistsError):
        synth_ct(path, shape=(3, 24, 32, 32))
    synth_ct(path, overwrite=True, shape=(2, 24, 32, 32))
    assert xr.open_zarr(path).sizes["time"] == 2


def test_synth_ct_raw_writes_one_tiff_per_timestep(tmp_path):
    out = synth_ct_raw(tmp_path / "raw", shape=(3, 20, 24, 24), seed=2)
    tiffs = sorted(out.glob("t*.tif"))
    assert [p.name for p in tiffs] == ["t000.tif", "t001.tif", "t002.tif"]
    data, _ = make_ct(shape=(3, 20, 24, 24), seed=2)
    for t, path in enumerate(tiffs):
        with tifffile.TiffFile(path) as tf:
            assert len(tf.pages) == 20
        np.testing.assert_array_equal(tifffile.imread(path), data.intensity[t].values)
    times = np.loadtxt(out / "times.txt")
    np.testing.assert_allclose(times, data.time.values)
    truth = open_dataset(out / "truth.zarr")
    assert truth.labels.shape == (3, 20, 24, 24)
    with pytest.raises(OutputExistsError):
        synth_ct_raw(out, shape=(3, 20, 24, 24))
    synth_ct_raw(out, overwrite=True, shape=(2, 20, 24, 24))
    assert sorted(p.name for p in out.glob("t*.tif")) == ["t000.tif", "t001.tif"]


TEXTURED = dict(shape=(3, 40, 48, 48), seed=7, texture_rms=0.05, noise_sigma=0.0, blur_sigma_voxels=0.0)


def test_electrode_texture_has_the_requested_contrast_and_leaves_the_rest():
    data, truth = make_ct(**TEXTURED)
    flat, _ = make_ct(**{**TEXTURED, "texture_rms": 0.0})
    image, labels = data.intensity.values[-1], truth.labels.values[-1]
    electrode = labels == CT_CLASSES.index("electrode")
    relative = image[electrode] / CLASS_INTENSITY[1] - 1
    assert 0.04 < relative.std() < 0.06 and abs(relative.mean()) < 0.01
    np.testing.assert_array_equal(image[~electrode], flat.intensity.values[-1][~electrode])
    np.testing.assert_array_equal(truth.labels.values, make_ct(**TEXTURED)[1].labels.values)


def test_texture_moves_rigidly_with_the_cell():
    """Voxel p of timestep t shows the reference texture at q = Rᵀ(p − c − s) + c."""
    shape = TEXTURED["shape"]
    cell = cell_geometry(shape, seed=7, times_min=[0, 120, 240], charge_end_min=120, texture_rms=0.05)
    ref = cell_texture(cell, 2, (0, 0, 0), shape[1:])  # the reference has no motion
    origin, box = (4, 8, 8), (8, 32, 32)  # stripping side, away from the borders
    p = np.stack(
        np.meshgrid(*[np.arange(o, o + n) for o, n in zip(origin, box, strict=True)], indexing="ij"), -1
    )
    for t in range(2):
        q = (p - cell.centre - cell.shifts[t]) @ cell.rotations[t] + cell.centre
        expected = ndimage.map_coordinates(ref, np.moveaxis(q, -1, 0), order=1)
        got = cell_texture(cell, t, origin, box)
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.97
        here = ref[tuple(slice(o, o + n) for o, n in zip(origin, box, strict=True))]
        assert np.corrcoef(got.ravel(), here.ravel())[0, 1] < 0.9  # it did move


def test_texture_does_not_depend_on_the_chunking():
    data, _ = make_ct(**{**TEXTURED, "noise_sigma": 0.02, "blur_sigma_voxels": 0.8})
    other, _ = make_ct(**{**TEXTURED, "noise_sigma": 0.02, "blur_sigma_voxels": 0.8}, chunks=(1, 13, 20, 17))
    np.testing.assert_array_equal(other.intensity.values, data.intensity.values)


def test_cli_texture_option_reaches_the_phantom(tmp_path: Path):
    from operando.cli import main

    paths = {}
    for rms in (0.0, 0.1):
        paths[rms] = tmp_path / f"c{rms}.zarr"
        args = ["synth", "ct", "--shape", "2,16,24,24", "-o", str(paths[rms])]
        assert main([*args, "--texture-rms", str(rms)]) == 0
    flat, textured = (open_dataset(paths[r]) for r in (0.0, 0.1))
    assert textured.attrs["texture_rms"] == 0.1 and flat.attrs["texture_rms"] == 0.0
    electrode = open_dataset(paths[0.1], group="truth").labels.values == 1
    diff = (textured.intensity.values - flat.intensity.values)[electrode]
    assert diff.std() > 0.01  # ~10 % of the electrode's 0.45
