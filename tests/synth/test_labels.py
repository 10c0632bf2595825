"""Sparse labels from a phantom's truth (the demo's stand-in for a person labelling slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from operando.cli import main
from operando.errors import ConfigError
from operando.io import open_dataset
from operando.synth import synth_ct
from operando.synth.labels import sparse_labels


def test_every_nth_slice_holds_truth_plus_one_and_the_rest_is_unlabelled(tmp_path: Path):
    cell = synth_ct(tmp_path / "c.zarr", shape=(2, 16, 24, 24), seed=0)
    assert (
        main(["synth", "labels", str(cell), "--group", "truth", "-o", str(tmp_path / "l"), "--every", "5"])
        == 0
    )
    truth = open_dataset(cell, group="truth").labels.values
    for t in range(2):
        got = tifffile.imread(tmp_path / "l" / f"labels_t{t}.tif")
        np.testing.assert_array_equal(got[:, :, 2::5], truth[t][:, :, 2::5] + 1)
        keep = np.zeros(24, bool)
        keep[2::5] = True
        assert not got[:, :, ~keep].any()
    (z_file,) = sparse_labels(cell, tmp_path / "z", every=4, times=[1], axis="z", group="truth")
    assert z_file.name == "labels_t1.tif"
    np.testing.assert_array_equal(tifffile.imread(z_file)[2::4], truth[1][2::4] + 1)
    (check,) = sparse_labels(cell, tmp_path / "check", every=4, first=0, times=[1], group="truth")
    got = tifffile.imread(check)
    np.testing.assert_array_equal(got[:, :, 0::4], truth[1][:, :, 0::4] + 1)
    assert not got[:, :, 2::4].any()  # none of the default slices: a model trained on them never saw these
    with pytest.raises(ConfigError, match="every=0"):
        sparse_labels(cell, tmp_path / "bad", every=0, group="truth")
    with pytest.raises(ConfigError, match=r"--first: 4 is not in 0..3"):
        sparse_labels(cell, tmp_path / "bad", every=4, first=4, group="truth")
