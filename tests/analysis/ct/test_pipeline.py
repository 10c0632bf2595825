"""``operando ct register|segment|stats|run`` on a synthetic cell, through the real command line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from operando.cli import main
from operando.io import open_dataset
from operando.synth import synth_ct
from operando.synth.ct import CT_CLASSES
from operando.synth.labels import truth_segmentation

LOCAL = ["--quiet", "--jobs", "1", "--cores", "2"]
FROZEN = {"times_min": [999.998, 999.999, 1000.0], "charge_end_min": 1000.0}  # only rigid motion differs


@pytest.fixture(scope="module")
def cell(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct")
    return synth_ct(root / "cell.zarr", shape=(3, 32, 48, 48), seed=2, n_dendrites=6, **FROZEN)


@pytest.fixture(scope="module")
def model(cell: Path) -> Path:
    """A small 2D model trained briefly on every 4th x-slice of the reference timestep."""
    truth = open_dataset(cell, group="truth").labels.values[-1]
    sparse = np.zeros_like(truth)
    sparse[:, :, ::4] = truth[:, :, ::4] + 1
    labels = cell.parent / "labels.tif"
    tifffile.imwrite(labels, sparse, photometric="minisblack")
    weights = cell.parent / "model.safetensors"
    classes = ",".join(CT_CLASSES)
    argv = ["train", str(cell), "--labels", str(labels), "--labels-time", "2", "--classes", classes]
    # a round budget, not a time limit: the same model on a busy machine
    argv += ["-o", str(weights), "--patch", "32", "--steps-per-round", "20"]
    argv += ["--rounds", "20", "--patience", "20", "--time-limit", "600"]
    assert main([*argv, "--device", "cpu", "--quiet"]) == 0
    return weights


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_run_chains_register_segment_stats_into_one_folder(cell: Path, model: Path, tmp_path: Path):
    out = tmp_path / "out"
    argv = ["ct", "run", str(cell), "--model", str(model), "-o", str(out), "--device", "cpu"]
    assert (
        main(
            [
                *argv,
                "--plating-side",
                "high",
                "--crop",
                "z=4:-4,y=4:-4,x=4:-4",
                "--current-density",
                "1.5",
                "--current-on",
                "0:10",
                "--reference-labels",
                str(cell.parent / "labels.tif"),
                "--reference-labels-time",
                "2",
                *LOCAL,
            ]
        )
        == 0
    )
    registered = open_dataset(out / "registered.zarr")
    assert registered.intensity.shape == (3, 32, 48, 48)
    assert bool(registered.converged.all())
    assert len(_rows(out / "registered.transforms.csv")) == 3
    seg = open_dataset(out / "segmented.zarr")
    assert seg.labels.attrs["flag_meanings"].split() == list(CT_CLASSES)
    assert seg.attrs["voxel_size_um"] == pytest.approx(1.33)
    rows = _rows(out / "stats" / "stats.csv")
    assert len(rows) == 3 * 7 and list(rows[0]) == ["time", "class", "voxels", "volume_um3", "thickness_um"]
    # the model is rough, but both electrodes are found and split apart
    volume = {(r["time"], r["class"]): float(r["volume_um3"]) for r in rows}
    assert all(volume[(t, c)] > 0 for t, _ in volume for c in ("stripping_electrode", "plating_electrode"))
    assert len(_rows(out / "stats" / "faraday.csv")) == 3
    # the model's training slices as reference: one timestep adjusted
    assert {r["time"] for r in _rows(out / "stats" / "adjusted.csv")} == {rows[-1]["time"]}
    pngs = sorted(p.name for p in (out / "stats").glob("*.png"))
    assert {"volumes.png", "thickness_maps.png", "faraday.png"} <= set(pngs)


@pytest.mark.slow
def test_segment_with_tta_averages_the_flips_and_records_it(cell: Path, model: Path, tmp_path: Path):
    common = ["--model", str(model), "--device", "cpu", *LOCAL]
    assert main(["ct", "segment", str(cell), "-o", str(tmp_path / "plain.zarr"), *common]) == 0
    assert main(["ct", "segment", str(cell), "-o", str(tmp_path / "tta.zarr"), "--tta", *common]) == 0
    plain, tta = (open_dataset(tmp_path / f"{n}.zarr") for n in ("plain", "tta"))
    assert (plain.attrs["test_time_flips"], tta.attrs["test_time_flips"]) == (0, 1)
    same = float((plain.labels == tta.labels).mean())
    assert 0.9 < same < 1.0  # the same model, averaged: most labels kept, some moved


def test_stats_of_the_truth_match_the_phantom_voxel_counts(cell: Path, tmp_path: Path):
    seg = truth_segmentation(cell, tmp_path / "seg.zarr")
    assert (
        main(["ct", "stats", str(seg), "-o", str(tmp_path / "stats"), "--plating-side", "high", *LOCAL]) == 0
    )
    rows = _rows(tmp_path / "stats" / "stats.csv")
    counts = open_dataset(cell, group="truth").voxel_count.values
    by_time: dict[str, dict[str, int]] = {}
    for r in rows:
        by_time.setdefault(r["time"], {})[r["class"]] = int(r["voxels"])
    for t, got in enumerate(by_time.values()):
        assert got["stripping_electrode"] + got["plating_electrode"] == counts[t, 1]
        assert got["deposited_li"] + got["redeposited_li"] == counts[t, 2]
        assert (got["dendrite"], got["pit"], got["background"]) == (counts[t, 3], counts[t, 4], counts[t, 0])


def test_bad_flags_are_one_line_errors(cell: Path, tmp_path: Path, capsys):
    seg = truth_segmentation(cell, tmp_path / "seg.zarr")
    out = str(tmp_path / "s")
    assert main(["ct", "stats", str(seg), "-o", out, "--crop", "y=60:70", *LOCAL]) == 2
    assert "CropError" not in (err := capsys.readouterr().err) and "y" in err and "48" in err
    assert main(["ct", "stats", str(seg), "-o", out, "--normal-axis", "q", *LOCAL]) == 2
    assert "q" in capsys.readouterr().err
    assert main(["ct", "stats", str(seg), "-o", out, "--current-density", "1.5", *LOCAL]) == 2
    assert "needs both" in capsys.readouterr().err
    assert (
        main(["ct", "register", str(cell), "-o", str(tmp_path / "r.zarr"), "--reference", "5", *LOCAL]) == 2
    )
    assert "5" in capsys.readouterr().err
