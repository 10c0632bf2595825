"""operando info: read from metadata only, on complete and incomplete datasets."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from operando.errors import DatasetLayoutError, InputNotFoundError
from operando.io.info import describe, summarize
from operando.io.layout import ct_dataset
from operando.io.store import COMPLETE_ATTR, write_dataset


@pytest.fixture
def cell(tmp_path: Path) -> Path:
    data = da.from_array(np.arange(2 * 6 * 8 * 10, dtype="f4").reshape(2, 6, 8, 10), chunks=(1, 3, 8, 10))
    ds = ct_dataset(data, voxel_size_um=1.33, times_min=[0.0, 12.5], attrs={"beamline": "2-BM"})
    return write_dataset(ds, tmp_path / "cell.zarr", target_mib=0.0005)


def test_summary_lists_variables_coords_and_ranges(cell: Path) -> None:
    s = summarize(cell)
    assert s.complete
    (var,) = s.variables
    assert (var.name, var.dims, var.shape, var.dtype) == (
        "intensity",
        ("time", "z", "y", "x"),
        (2, 6, 8, 10),
        "float32",
    )
    assert var.chunks[0] == 1
    coords = {c.name: c for c in s.coords}
    assert coords["time"].value_range == (0.0, 12.5) and coords["time"].units == "min"
    assert coords["x"].value_range == pytest.approx((0.0, 9 * 1.33)) and coords["x"].units == "µm"
    assert s.disk_bytes > 0


def test_describe_names_codec_size_and_status(cell: Path) -> None:
    text = describe(cell)
    assert "complete (marked" in text
    assert "blosc zstd bitshuffle" in text
    assert "0 .. 12.5 min" in text
    assert "beamline = '2-BM'" in text


def test_describe_reports_incomplete_with_missing_chunks(cell: Path) -> None:
    del zarr.open_group(str(cell), mode="r+").attrs[COMPLETE_ATTR]
    (cell / "intensity" / "c" / "1" / "0" / "0" / "0").unlink()
    text = describe(cell)
    assert "INCOMPLETE (intensity: 1/" in text


def test_describe_refuses_missing_and_non_zarr(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no such dataset"):
        describe(tmp_path / "absent.zarr")
    with pytest.raises(DatasetLayoutError, match="not a zarr v3 store"):
        describe(tmp_path)
