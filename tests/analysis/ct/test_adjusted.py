"""Error-adjusted class volumes from reference slices (operando.analysis.ct.adjusted)."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from operando.analysis.ct.adjusted import adjusted_volumes, jackknife_se, stratified_estimate
from operando.analysis.ct.pipeline import ReferenceSlices, statistics
from operando.analysis.ct.regions import SPLIT_CLASSES
from operando.analysis.ct.stats import cell_statistics
from operando.cli import main
from operando.errors import AxisError, LabelsError
from operando.io import open_dataset, write_dataset
from operando.models.labels import open_label_tiffs
from operando.synth import synth_ct

ELECTRODE, DEPOSITED = 1, 2
LOCAL = ["--quiet", "--jobs", "1", "--cores", "2"]
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")


@given(
    hnp.arrays(np.int64, st.integers(1, 400), elements=st.integers(0, 6)),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=50, deadline=None)
def test_a_reference_of_every_voxel_gives_the_true_counts(truth, seed):
    """Oracle: with every voxel in the reference, Σ_i N_i n_ij / n_i· = Σ_i n_ij, the true count."""
    rng = np.random.default_rng(seed)
    mapped = np.where(rng.random(truth.size) < 0.3, rng.integers(0, 7, truth.size), truth)
    pairs = np.zeros((7, 7), np.int64)
    np.add.at(pairs, (mapped, truth), 1)
    estimate = stratified_estimate(np.bincount(mapped, minlength=7), pairs)
    np.testing.assert_allclose(estimate, np.bincount(truth, minlength=7), atol=1e-9)


def test_a_class_without_reference_voxels_is_taken_as_mapped():
    pairs = np.diag([5, 0, 3]).astype(np.int64)
    pairs[0, 2] = 5  # half of class 0's reference voxels are truly class 2
    np.testing.assert_allclose(stratified_estimate(np.array([100, 40, 10]), pairs), [50, 40, 60])


def test_jackknife_is_zero_for_identical_slices_and_nan_for_one():
    one = np.array([[8, 2], [0, 10]])
    assert np.array_equal(jackknife_se(np.array([80, 20]), np.stack([one] * 5)), [0, 0])
    assert np.isnan(jackknife_se(np.array([80, 20]), one[None])).all()
    varied = np.stack([one, np.array([[9, 1], [0, 10]]), np.array([[7, 3], [0, 10]])])
    assert (jackknife_se(np.array([80, 20]), varied) > 0).all()


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """The phantom's truth, and a "segmentation" that loses every Li voxel touching the electrode.

    A model's systematic confusion as in ``benchmarks/results/ct_accuracy.md``: the thin
    Li layers lose their voxel next to the electrode. Reference slices: every 4th
    x-slice of the truth at t = 1, 2 (the value + 1, as training labels).
    """
    root = tmp_path_factory.mktemp("adjusted")
    cell = synth_ct(root / "cell.zarr", shape=(3, 40, 48, 48), seed=3, n_dendrites=4)
    truth = open_dataset(cell, group="truth").labels
    values = truth.values
    touching = np.zeros(values.shape, bool)
    for shift in (1, -1):
        touching |= np.roll(values, shift, axis=1) == ELECTRODE
    biased = np.where((values == DEPOSITED) & touching, ELECTRODE, values).astype(np.uint8)
    seg = xr.Dataset({"labels": truth.copy(data=biased)}).drop_vars(["class", "axis"], errors="ignore")
    seg.attrs.update(voxel_size_um=open_dataset(cell).attrs["voxel_size_um"], normal_axis="z")
    seg_path = write_dataset(seg.chunk({"time": 1, "z": 16, "y": 24, "x": 24}), root / "seg.zarr")
    files = []
    for t in (1, 2):
        sparse = np.zeros(values.shape[1:], np.uint8)
        sparse[:, :, 2::4] = values[t][:, :, 2::4] + 1
        files.append(root / f"ref_t{t}.tif")
        tifffile.imwrite(files[-1], sparse, photometric="minisblack")
    return seg_path, truth, files


def _statistics(labels: xr.DataArray) -> xr.Dataset:
    with dask.config.set(scheduler="threads"):
        return cell_statistics(labels, plating_side="high")


def test_adjusted_volumes_undo_a_systematic_confusion(biased):
    seg_path, truth, files = biased
    labels = open_dataset(seg_path).labels
    got = _statistics(labels)
    want = _statistics(truth.assign_attrs(labels.attrs))
    reference = open_label_tiffs(files, image_shape=labels.shape, n_classes=5)
    with dask.config.set(scheduler="threads"):
        adj = adjusted_volumes(labels, reference, got)
    assert list(adj.time.values) == list(got.time.values[[1, 2]])
    assert list(adj.reference_slices.values) == [12, 12]
    for t in (1, 2):
        for c in ("deposited_li", "redeposited_li"):
            true = float(want.voxels[t].sel({"class": c}))
            if true < 500:
                continue
            counted = float(got.voxels[t].sel({"class": c}))
            adjusted = float(adj.adjusted_voxels.sel({"class": c})[t - 1])
            se = float(adj.adjusted_voxels_se.sel({"class": c})[t - 1])
            assert counted < 0.9 * true  # the bias the reference corrects
            assert abs(adjusted - true) < max(0.02 * true, 3 * se)
            assert 0 < se < 0.1 * true
    # the confusion the reference measured: Li mapped as electrode, none the other way
    m = adj.error_matrix.isel(time=1)
    assert int(m.sel(mapped="plating_electrode", reference="deposited_li")) > 0
    assert int(m.sel(mapped="deposited_li", reference="plating_electrode")) == 0
    assert int(m.sum()) == np.count_nonzero(tifffile.imread(files[1]))
    np.testing.assert_allclose(adj.adjusted_volume_um3, adj.adjusted_voxels * got.attrs["voxel_size_um"] ** 3)


def test_the_crop_limits_the_reference_voxels_too(biased):
    seg_path, _, files = biased
    labels = open_dataset(seg_path).labels
    with dask.config.set(scheduler="threads"):
        got = cell_statistics(labels, plating_side="high", crop="y=6:-6,x=4:40")
        adj = adjusted_volumes(labels, open_label_tiffs(files, image_shape=labels.shape, n_classes=5), got)
    inside = np.count_nonzero(tifffile.imread(files[0])[:, 6:-6, 4:40])
    assert int(adj.error_matrix.isel(time=0).sum()) == inside
    assert list(adj.reference_slices.values) == [9, 9]
    np.testing.assert_allclose(adj.adjusted_voxels.sum("class"), got.voxels.isel(time=[1, 2]).sum("class"))


def test_statistics_write_the_adjusted_tables_and_plot(biased, client, tmp_path: Path):
    seg_path, _, files = biased
    stats = statistics(
        seg_path,
        tmp_path / "stats",
        plating_side="high",
        reference=ReferenceSlices(tuple(files)),
        client=client,
    )
    table = pd.read_csv(tmp_path / "stats" / "adjusted.csv")
    assert list(table.columns[:2]) == ["time", "class"]
    assert {"adjusted_voxels", "adjusted_voxels_se", "adjusted_volume_um3", "adjusted_thickness_um"} <= set(
        table.columns
    )
    assert sorted(set(table.time)) == sorted(stats.time.values[[1, 2]])
    assert set(table["class"]) == set(SPLIT_CLASSES)
    matrix = pd.read_csv(tmp_path / "stats" / "error_matrix.csv")
    assert list(matrix.columns) == ["time", "mapped", "reference", "voxels"] and len(matrix) == 2 * 7 * 7
    assert (tmp_path / "stats" / "volumes.png").stat().st_size > 0


def test_bad_reference_is_a_clear_error(biased, tmp_path: Path):
    seg_path, truth, files = biased
    labels = open_dataset(seg_path).labels
    got = _statistics(labels)
    reference = open_label_tiffs(files, image_shape=labels.shape, n_classes=5)
    with pytest.raises(AxisError, match="'q' is not a spatial dimension"):
        adjusted_volumes(labels, reference, got, slice_axis="q")
    small = tmp_path / "small_t1.tif"
    tifffile.imwrite(small, np.ones((40, 48, 40), np.uint8))
    narrow = open_label_tiffs([small], image_shape=(3, 40, 48, 40), n_classes=5)
    with pytest.raises(LabelsError, match=r"small_t1.tif.*differs from the labels'.*Label the reference"):
        adjusted_volumes(labels, narrow, got)
    with pytest.raises(LabelsError, match="opened for 4 classes; the labels have 5"):
        adjusted_volumes(labels, open_label_tiffs(files, image_shape=labels.shape, n_classes=4), got)
    high = tmp_path / "high_t1.tif"
    tifffile.imwrite(high, np.full(truth.shape[1:], 9, np.uint8))
    with pytest.raises(LabelsError, match="value 9 at time 1 exceeds the labels' 5 classes"):
        adjusted_volumes(labels, open_label_tiffs([high], image_shape=labels.shape, n_classes=5), got)


def test_ct_stats_takes_reference_labels_on_the_command_line(biased, tmp_path: Path, capsys):
    seg_path, _, files = biased
    out = tmp_path / "stats"
    argv = ["ct", "stats", str(seg_path), "-o", str(out), "--plating-side", "high", *LOCAL]
    refs = [a for f in files for a in ("--reference-labels", str(f))]
    assert main([*argv, *refs, "--reference-labels-time", "1,2", "--reference-axis", "x"]) == 0
    table = pd.read_csv(out / "adjusted.csv")
    assert len(table) == 2 * len(SPLIT_CLASSES) and table.adjusted_voxels_se.notna().all()
    assert main([*argv, "--overwrite", *refs, "--reference-labels-time", "1"]) == 2
    assert "1 times for 2 label files" in capsys.readouterr().err


class _CountingVolume:
    """A real TIFF label volume that records the boxes read from it (the pass must never read it whole)."""

    def __init__(self, volume):
        self.volume, self.boxes = volume, []

    def read(self, box):
        self.boxes.append(tuple((b.start, b.stop) for b in box))
        return self.volume.read(box)


def test_the_reference_is_read_one_chunk_box_at_a_time(biased):
    seg_path, _, files = biased
    labels = open_dataset(seg_path).labels
    got = _statistics(labels)
    reference = open_label_tiffs(files, image_shape=labels.shape, n_classes=5)
    spy = reference.volumes[1] = _CountingVolume(reference.volumes[1])
    with dask.config.set(scheduler="threads"):
        adjusted_volumes(labels, reference, got)
    chunk = tuple(c[0] for c in labels.chunks[1:])
    assert len(spy.boxes) == np.prod(labels.data.numblocks[1:])  # each chunk's box once
    assert all(stop - start <= n for box in spy.boxes for (start, stop), n in zip(box, chunk, strict=True))


def test_a_zarr_reference_gives_the_same_estimates_as_its_tiffs(biased, tmp_path: Path):
    seg_path, _, files = biased
    stack = np.stack([np.zeros_like(tifffile.imread(files[0])), *(tifffile.imread(f) for f in files)])
    store = zarr.open_group(tmp_path / "ref.zarr", mode="w")
    store.create_array("labels", data=stack, chunks=(1, 16, 24, 24))
    argv = ["ct", "stats", str(seg_path), "--plating-side", "high", *LOCAL]
    assert (
        main(
            [*argv, "-o", str(tmp_path / "tiff"), *(a for f in files for a in ("--reference-labels", str(f)))]
        )
        == 0
    )
    zarr_ref = ["--reference-labels", str(tmp_path / "ref.zarr"), "--reference-labels-var", "labels"]
    assert main([*argv, "-o", str(tmp_path / "zarr"), *zarr_ref]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "zarr" / "adjusted.csv"), pd.read_csv(tmp_path / "tiff" / "adjusted.csv")
    )
