"""Label files: time matching, shape/value checks, per-slice counts read slice by slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from operando.errors import InputNotFoundError, LabelsError, TrainingDataError
from operando.models.labels import match_times, open_label_tiffs, open_label_zarr

SHAPE = (3, 4, 5, 6)  # (time, z, y, x)


def _volume(seed: int, *, k: int = 3, density: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.integers(1, k + 1, SHAPE[1:], dtype=np.uint8)
    vol[rng.random(SHAPE[1:]) > density] = 0
    return vol


def test_times_from_names_and_from_an_explicit_list(tmp_path: Path):
    a, b = tmp_path / "cell_t2.tif", tmp_path / "cell_t0.tiff"
    assert match_times([a, b], times=None, n_times=3) == {2: a, 0: b}
    assert match_times([a, b], times=[1, 0], n_times=3) == {1: a, 0: b}


@pytest.mark.parametrize(
    ("names", "times", "message"),
    [
        (["labels.tif"], None, "time index is missing"),
        (["a_t1.tif", "b_t1.tif"], None, "ambiguous"),
        (["a_t7.tif"], None, "outside the image's 3 timesteps"),
        (["a.tif", "b.tif"], [0], "1 times for 2 label files"),
    ],
)
def test_time_matching_errors(names, times, message):
    with pytest.raises(LabelsError, match=message):
        match_times([Path(n) for n in names], times=times, n_times=3)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_counts_equal_bincount_of_whole_volume(tmp_path: Path, axis: int, compression):
    """Memory-mapped (uncompressed) and page-by-page (compressed) files give the same counts."""
    vols = {0: _volume(0), 2: _volume(1)}
    vols[2][:, :, 3] = 0  # slice 3 along x is empty at time 2
    paths = []
    for t, v in vols.items():
        paths.append(tmp_path / f"l_t{t}.tif")
        tifffile.imwrite(paths[-1], v, compression=compression, photometric="minisblack")
    labels = open_label_tiffs(paths, image_shape=SHAPE, n_classes=3)
    assert labels.times == (0, 2)
    counts = labels.slice_counts(axis)
    expected = {}
    for t, v in vols.items():
        for i in range(v.shape[axis]):
            c = np.bincount(np.take(v, i, axis=axis).ravel(), minlength=4)
            if c[1:].sum():
                expected[t, i] = c
    assert counts.keys() == expected.keys()
    for key, c in expected.items():
        np.testing.assert_array_equal(counts[key], c)
    box = (slice(1, 3), slice(0, 5), slice(2, 4))
    np.testing.assert_array_equal(labels.read(2, box), vols[2][box])


def test_label_file_errors(tmp_path: Path):
    tifffile.imwrite(tmp_path / "small_t0.tif", np.zeros((4, 5, 5), np.uint8), photometric="minisblack")
    with pytest.raises(LabelsError, match=r"shape \(4, 5, 5\) differs from the image's"):
        open_label_tiffs([tmp_path / "small_t0.tif"], image_shape=SHAPE, n_classes=3)
    with pytest.raises(InputNotFoundError, match="no such label file"):
        open_label_tiffs([tmp_path / "gone_t0.tif"], image_shape=SHAPE, n_classes=3)
    bad = _volume(2)
    bad[1, 2, 3] = 4
    tifffile.imwrite(tmp_path / "bad_t1.tif", bad, photometric="minisblack")
    labels = open_label_tiffs([tmp_path / "bad_t1.tif"], image_shape=SHAPE, n_classes=3)
    with pytest.raises(LabelsError, match="value 4 at time 1 exceeds the 3 classes"):
        labels.slice_counts(0)


def test_zarr_labels_keep_only_labelled_timesteps(tmp_path: Path):
    store = tmp_path / "labels.zarr"
    arr = zarr.create_array(str(store / "drafts"), shape=SHAPE, chunks=(1, 2, 5, 6), dtype="uint8")
    full = np.zeros(SHAPE, np.uint8)
    full[1] = _volume(3)
    arr[:] = full
    labels = open_label_zarr(store, variable="drafts", image_shape=SHAPE, n_classes=3)
    assert labels.times == (1,)
    np.testing.assert_array_equal(labels.read(1, (slice(0, 4), slice(0, 5), slice(0, 6))), full[1])
    with pytest.raises(LabelsError, match="differs from the image's"):
        open_label_zarr(store, variable="drafts", image_shape=(3, 4, 5, 7), n_classes=3)
    with pytest.raises(LabelsError, match="no label array there"):
        open_label_zarr(store, variable="nope", image_shape=SHAPE, n_classes=3)
    arr[:] = 0
    with pytest.raises(TrainingDataError, match="no voxel is labelled"):
        open_label_zarr(store, variable="drafts", image_shape=SHAPE, n_classes=3)
