"""``operando train`` and ``operando predict`` end to end on synthetic CT, and their errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from operando.cli import main
from operando.engine.patches import predict_array
from operando.io import open_dataset
from operando.io.layout import label_classes
from operando.models.normalization import Normalized
from operando.models.weights import load_model, read_header
from operando.synth import synth_ct

CLASSES = "background,lithium,pit"
MERGE = np.array([1, 2, 2, 2, 3], np.uint8)


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("cli")
    path = synth_ct(
        root / "cell.zarr", shape=(2, 16, 32, 32), seed=2, n_pits=8, max_angle_deg=0.0, max_shift_voxels=0.0
    )
    truth = MERGE[open_dataset(path, group="truth").labels.values]
    files = []
    for t in range(2):
        sparse = np.zeros_like(truth[t])
        sparse[:, :, ::4] = truth[t][:, :, ::4]
        files.append(root / f"sparse_{t}.tif")
        tifffile.imwrite(files[-1], sparse, photometric="minisblack")
    return path, files


@pytest.fixture(scope="module")
def model(cell, tmp_path_factory) -> tuple[Path, str, str]:
    path, files = cell
    out = tmp_path_factory.mktemp("model") / "model.safetensors"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    stdout, stderr = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    capture.setattr(sys, "stderr", stderr)
    try:
        code = main(
            [
                *("train", str(path), "--labels", str(files[0]), "--labels", str(files[1]), "--labels-time"),
                *("0,1", "--classes", CLASSES, "-o", str(out), "--patch", "16", "--steps-per-round", "3"),
                *("--patience", "2", "--time-limit", "30", "--device", "cpu"),
            ]
        )
    finally:
        capture.undo()
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def test_train_writes_weights_curve_table_and_progress(model, cell):
    out, stdout, stderr = model
    assert out.is_file() and out.with_name("model.curve.png").is_file()
    assert "operando: round 1: loss" in stderr and "validation mean IoU" in stderr
    for word in ("background", "lithium", "pit", "mean IoU", "accuracy", "test split"):
        assert word in stdout
    header = read_header(out)
    assert header.classes == tuple(CLASSES.split(","))
    assert header.provenance["image"].endswith("cell.zarr:intensity")
    assert header.provenance["training"]["axis"] == "x" and header.normalization is not None


def test_predict_writes_drafts_equal_to_the_in_memory_model(model, cell, tmp_path: Path):
    path, _ = cell
    drafts = tmp_path / "drafts.zarr"
    args = ["predict", str(path), "--model", str(model[0]), "-o", str(drafts), "--patch", "16"]
    assert main([*args, "--probabilities", "--jobs", "1", "--cores", "1", "--quiet"]) == 0
    ds = open_dataset(drafts)
    assert ds.labels.dims == ("time", "z", "y", "x") and ds.labels.dtype == np.uint8
    assert label_classes(ds.labels) == {0: "background", 1: "lithium", 2: "pit"}
    assert ds.probabilities.dims == ("class", "time", "z", "y", "x") and ds.probabilities.dtype == np.float16
    labels = ds.labels.values
    probs = ds.probabilities.values
    # the label's probability is the largest (float16 rounding may tie two classes)
    np.testing.assert_array_equal(np.take_along_axis(probs, labels[None], axis=0)[0], probs.max(axis=0))
    np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=3e-3)
    network, header = load_model(model[0])
    reference = Normalized(network, header.normalization).eval()
    image = open_dataset(path).intensity.values
    with torch.inference_mode():
        for t, x in ((0, 5), (1, 30)):
            logits = predict_array(image[t, :, :, x], reference, patch=16)
            assert (logits.argmax(0) == labels[t, :, :, x]).mean() >= 0.999
    assert main([*args, "--jobs", "1", "--cores", "1", "--quiet"]) == 2  # exists; needs --overwrite


def test_predict_defaults_to_the_training_patch(model, cell, tmp_path: Path):
    """A larger inference patch pads far more than training did (measured: −0.26 mean IoU at 256 vs 32)."""
    path, _ = cell
    drafts = tmp_path / "d.zarr"
    assert (
        main(["predict", str(path), "--model", str(model[0]), "-o", str(drafts), "--quiet", "--jobs", "1"])
        == 0
    )
    assert open_dataset(drafts).attrs["patch"] == read_header(model[0]).provenance["training"]["patch"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "a,b"], r"sparse_\d\.tif: value 3 at time \d exceeds the 2 classes"),
        (["--classes", CLASSES, "--labels-time", "0,1,1"], "3 times for 2 label files"),
        (["--classes", CLASSES], "the time index is missing"),
        (["--classes", CLASSES, "--labels", "."], r"--labels: \. is a folder.*--labels-var"),
        (
            ["--classes", CLASSES, "--labels-time", "0,1", "--processes", "0"],
            r"--processes.*need at least one",
        ),
    ],
)
def test_train_errors_are_one_line_with_exit_2(cell, tmp_path: Path, capsys, extra, message):
    path, files = cell
    argv = [
        "train",
        str(path),
        "--labels",
        str(files[0]),
        "--labels",
        str(files[1]),
        "-o",
        str(tmp_path / "m.st"),
    ]
    if "--labels-time" not in extra and extra[1] != CLASSES:
        argv += ["--labels-time", "0,1"]
    assert main([*argv, *extra, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("operando: error: ") and re.search(message, err) and err.count("\n") == 1


def test_corrected_drafts_feed_the_next_training_from_the_previous_weights(model, cell, tmp_path: Path):
    """The paper's loop: predict drafts, correct some slices (drafts + 1 = labels), train again with --init."""
    path, _ = cell
    drafts = tmp_path / "drafts.zarr"
    common = ["--jobs", "1", "--cores", "1", "--quiet"]
    assert (
        main(["predict", str(path), "--model", str(model[0]), "-o", str(drafts), "--patch", "16", *common])
        == 0
    )
    truth = MERGE[open_dataset(path, group="truth").labels.values]
    corrected = np.zeros_like(truth)
    corrected[:, :, :, 2::4] = open_dataset(drafts).labels.values[:, :, :, 2::4] + 1
    corrected[:, :, :, 2::8] = truth[:, :, :, 2::8]  # the slices a person fixed in napari
    store = tmp_path / "corrected.zarr"
    zarr.create_array(str(store / "labels"), shape=truth.shape, chunks=(1, 16, 32, 32), dtype="uint8")[:] = (
        corrected
    )
    out = tmp_path / "model2.safetensors"
    argv = ["train", str(path), "--labels", str(store), "--labels-var", "labels", "--classes", CLASSES]
    argv += ["-o", str(out), "--init", str(model[0]), "--patch", "16", "--steps-per-round", "2"]
    assert main([*argv, "--patience", "1", "--device", "cpu", "--quiet"]) == 0
    prov = read_header(out).provenance["training"]
    assert prov["init"] == str(model[0]) and prov["labels"] == [f"{store}/labels"]
    assert sum(prov["label_voxels"].values()) == int((corrected > 0).sum())


def test_context_model_from_the_cli_predicts_across_its_training_axis(cell, tmp_path: Path, capsys):
    """--context K: the header keeps K and the axis, and predict defaults to that axis."""
    path, files = cell
    out = tmp_path / "ctx.safetensors"
    train = [*("train", str(path), "--labels", str(files[0]), "--labels", str(files[1]), "--labels-time")]
    train += [*("0,1", "--classes", CLASSES, "-o", str(out), "--patch", "16", "--steps-per-round", "2")]
    train += [*("--patience", "1", "--time-limit", "20", "--device", "cpu", "--context", "1", "--axis", "y")]
    assert main(train) == 0, capsys.readouterr().err
    header = read_header(out)
    assert (header.context, header.axis) == (1, "y")
    drafts = tmp_path / "d.zarr"
    assert main(["predict", str(path), "--model", str(out), "-o", str(drafts), "--quiet", "--jobs", "1"]) == 0
    attrs = open_dataset(drafts).attrs
    assert (attrs["axis"], attrs["context"]) == ("y", 1)
    refused = ["predict", str(path), "--model", str(out), "-o", str(tmp_path / "x.zarr"), "--axis", "x"]
    assert main([*refused, "--quiet", "--jobs", "1"]) == 2
    assert "trained with context 1 along 'y'" in capsys.readouterr().err
