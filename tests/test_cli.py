"""The operando command line: verbs end to end, and bad input as one clear line with exit 2."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from operando.cli import main
from operando.config import config
from operando.io.store import COMPLETE_ATTR, open_dataset


def _volume(path: Path, shape: tuple[int, ...] = (4, 6, 5), dtype: str = "uint16") -> Path:
    tifffile.imwrite(path, np.arange(np.prod(shape), dtype=dtype).reshape(shape), photometric="minisblack")
    return path


def test_ingest_ct_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vols = [_volume(tmp_path / f"t{i}.tif") for i in range(2)]
    out = tmp_path / "cell.zarr"
    assert (
        main(["ingest", "ct", *map(str, vols), "--voxel-size", "1.33", "--times", "0,30", "-o", str(out)])
        == 0
    )
    ds = open_dataset(out)
    assert ds.intensity.shape == (2, 4, 6, 5)
    assert ds.time.values.tolist() == [0.0, 30.0]
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "intensity" in text and "complete (marked" in text and "0 .. 30 min" in text


def test_times_from_file(tmp_path: Path) -> None:
    vols = [_volume(tmp_path / f"t{i}.tif") for i in range(3)]
    (tmp_path / "times.txt").write_text("0\n15.5\n40\n")
    out = tmp_path / "cell.zarr"
    args = [
        "ingest",
        "ct",
        *map(str, vols),
        "--voxel-size",
        "2",
        "--times",
        str(tmp_path / "times.txt"),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert open_dataset(out).time.values.tolist() == [0.0, 15.5, 40.0]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["ingest", "ct", str(d / "absent.tif"), "--voxel-size", "1"], "absent.tif"),
        (
            lambda d: ["ingest", "ct", str(_volume(d / "a.tif")), "--voxel-size", "1", "--times", "0,1"],
            "--times: 2 times for 1 volumes",
        ),
        (
            lambda d: [
                "ingest",
                "ct",
                str(_volume(d / "a.tif")),
                str(_volume(d / "b.tif", (4, 6, 6))),
                "--voxel-size",
                "1",
            ],
            "b.tif",
        ),
        (lambda d: ["info", str(d / "nothing.zarr")], "no such dataset"),
    ],
    ids=["missing-file", "times-count", "shape-mismatch", "info-missing"],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args, message: str
) -> None:
    args = make_args(tmp_path)
    if args[0] == "ingest":
        args += ["-o", str(tmp_path / "out.zarr")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the cluster's lines
    assert err.startswith("operando: error: ") and message in err
    out = tmp_path / "out.zarr"
    assert not out.exists() or COMPLETE_ATTR not in (out / "zarr.json").read_text()


def test_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vol = _volume(tmp_path / "a.tif")
    out = tmp_path / "cell.zarr"
    base = ["ingest", "ct", str(vol), "--voxel-size", "1", "-o", str(out)]
    assert main(base) == 0
    assert main(base) == 2
    assert "exists already" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0


@pytest.mark.skipif(
    shutil.which("operando") is None and not Path(sys.executable).with_name("operando").exists(),
    reason="console script not installed",
)
def test_console_script_runs() -> None:
    exe = shutil.which("operando") or str(Path(sys.executable).with_name("operando"))
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("operando ")


def test_heavy_verbs_run_on_a_cluster_with_a_bar_and_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vol = _volume(tmp_path / "a.tif", (40, 30, 20))
    args = ["ingest", "ct", str(vol), "--voxel-size", "1", "--jobs", "1", "--memory", "1GiB"]
    assert main([*args, "-o", str(tmp_path / "loud.zarr")]) == 0
    err = capsys.readouterr().err
    assert "local cluster: 1 worker processes" in err and "1.00 GiB each" in err
    assert "dask dashboard at http" in err or "no dask dashboard" in err
    assert "loud.zarr [####" in err and "chunks (0 reused)" in err
    assert re.search(r"loud.zarr: (\d+) chunks done, 0 reused of \1, .* peak worker memory \d+ MiB", err)
    assert main([*args, "-o", str(tmp_path / "quiet.zarr"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(
        open_dataset(tmp_path / "quiet.zarr").intensity.values,
        open_dataset(tmp_path / "loud.zarr").intensity.values,
    )


def test_unreachable_scheduler_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vol = _volume(tmp_path / "a.tif")
    args = ["ingest", "ct", str(vol), "--voxel-size", "1", "-o", str(tmp_path / "o.zarr")]
    with config.set({"cluster.timeout": 2}):
        assert main([*args, "--cluster", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "operando: error: " in err and "no dask scheduler answers at tcp://127.0.0.1:9" in err
    assert not (tmp_path / "o.zarr").exists()
