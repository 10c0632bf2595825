"""Readers: every format as lazy frames (N, Y, X), read a few frames per task."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from operando.errors import (
    InputNotFoundError,
    NonFiniteInputError,
    ShapeMismatchError,
    TruncatedFileError,
    UnsupportedDtypeError,
    UnsupportedFormatError,
)
from operando.io.readers import check_finite, open_frames, read_tiff
from operando.io.readers.tiff import natural_key


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 4000, (12, 16, 20), dtype=np.uint16)


def test_tiff_reads_few_pages_per_task(tmp_path: Path, stack: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "v.tif", stack, description="beamline 2-BM, 25 keV", photometric="minisblack")
    frames = read_tiff(tmp_path / "v.tif", frames=5)
    assert isinstance(frames.data, da.Array)
    assert frames.data.chunks[0] == (5, 5, 2)
    assert frames.attrs["tiff:image_description"] == "beamline 2-BM, 25 keV"
    np.testing.assert_array_equal(frames.data[3:9:2, 4].compute(), stack[3:9:2, 4])
    np.testing.assert_array_equal(frames.data.compute(), stack)


def test_folder_of_slices_is_naturally_sorted(tmp_path: Path, stack: np.ndarray) -> None:
    for i, frame in enumerate(stack):
        tifffile.imwrite(tmp_path / f"im{i}.tif", frame, photometric="minisblack")
    assert [p.name for p in sorted(tmp_path.iterdir(), key=natural_key)][:3] == [
        "im0.tif",
        "im1.tif",
        "im2.tif",
    ]
    np.testing.assert_array_equal(open_frames(tmp_path).data.compute(), stack)


def test_folder_slice_of_other_shape(tmp_path: Path, stack: np.ndarray) -> None:
    for i, frame in enumerate(stack[:3]):
        tifffile.imwrite(tmp_path / f"im{i}.tif", frame, photometric="minisblack")
    tifffile.imwrite(tmp_path / "im10.tif", stack[0, :8], photometric="minisblack")
    with pytest.raises(ShapeMismatchError, match=r"im10\.tif: slice is \(8, 20\)"):
        open_frames(tmp_path)


def test_hdf5_npy_zarr(tmp_path: Path, stack: np.ndarray) -> None:
    with h5py.File(tmp_path / "s.h5", "w") as fh:
        fh["exchange/data"] = stack
        fh["exchange/data"].attrs["energy_kev"] = 25.0
        fh.attrs["beamline"] = "2-BM"
    np.save(tmp_path / "s.npy", stack)
    zarr.create_array(str(tmp_path / "s.zarr"), name="counts", data=stack, chunks=(4, 16, 20))
    h5 = open_frames(tmp_path / "s.h5")
    assert h5.attrs["hdf5:beamline"] == "2-BM"
    assert h5.attrs["hdf5:data:energy_kev"] == 25.0
    for frames in (h5, open_frames(tmp_path / "s.npy"), open_frames(tmp_path / "s.zarr" / "counts")):
        assert isinstance(frames.data, da.Array)
        np.testing.assert_array_equal(frames.data.compute(), stack)


def test_hdf5_missing_dataset(tmp_path: Path, stack: np.ndarray) -> None:
    with h5py.File(tmp_path / "s.h5", "w") as fh:
        fh["a"], fh["b"] = stack, stack
    with pytest.raises(
        InputNotFoundError, match=r"s\.h5: no dataset '/nope' in the file \(datasets: /a, /b\)"
    ):
        open_frames(tmp_path / "s.h5", dataset_path="/nope")
    with pytest.raises(InputNotFoundError, match="2 candidate image datasets"):
        open_frames(tmp_path / "s.h5")


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"nope\.tif: no such file"):
        open_frames(tmp_path / "nope.tif")
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(UnsupportedFormatError, match=r"a\.png: file type '\.png' is not supported"):
        open_frames(tmp_path / "a.png")
    (tmp_path / "b.tif").write_bytes(b"hello world")
    with pytest.raises(UnsupportedFormatError, match=r"b\.tif: not a TIFF file"):
        open_frames(tmp_path / "b.tif")


@pytest.mark.parametrize("dtype", [np.complex64, bool, object])
def test_unsupported_dtype(tmp_path: Path, dtype: type) -> None:
    arr = np.zeros((2, 3, 4), dtype=dtype)
    with h5py.File(tmp_path / "s.h5", "w") as fh:
        if dtype is object:
            fh.create_dataset(
                "d", data=np.array(["a"] * 24, dtype=object).reshape(2, 3, 4), dtype=h5py.string_dtype()
            )
        else:
            fh["d"] = arr
    with pytest.raises(UnsupportedDtypeError, match=r"s\.h5:/d: data type .* cannot be ingested"):
        open_frames(tmp_path / "s.h5")


def test_npy_object_and_truncated(tmp_path: Path, stack: np.ndarray) -> None:
    np.save(tmp_path / "o.npy", np.array([[[1, "a"]]], dtype=object))
    with pytest.raises(UnsupportedDtypeError, match=r"o\.npy: data type object"):
        open_frames(tmp_path / "o.npy")
    np.save(tmp_path / "t.npy", stack)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match=r"t\.npy: file is shorter than its \.npy header"):
        open_frames(tmp_path / "t.npy")


@pytest.mark.parametrize("keep", [0.5, 0.97])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff(tmp_path: Path, stack: np.ndarray, keep: float, compression: str | None) -> None:
    tifffile.imwrite(tmp_path / "v.tif", stack, compression=compression, photometric="minisblack")
    data = (tmp_path / "v.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        TruncatedFileError,
        match=r"cut\.tif: .*(past the file end|cannot be read|the file ends).*copy it again",
    ):
        read_tiff(tmp_path / "cut.tif")


def test_non_finite_raises_when_computed(stack: np.ndarray) -> None:
    bad = stack.astype(np.float32)
    bad[7, 2, 3] = np.nan
    checked = check_finite(da.from_array(bad, chunks=(4, 16, 20)), "vol.tif")
    checked[:4].compute()  # blocks without NaN pass
    with pytest.raises(
        NonFiniteInputError,
        match=r"vol\.tif: 1 NaN/inf value\(s\) in a block, the first at index \(7, 2, 3\)",
    ):
        checked.compute()
