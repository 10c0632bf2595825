"""Ingest: lazy build, round trips through real files, bad input, out-of-core memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from operando.errors import (
    ConfigError,
    EnergyListError,
    EnergyOrderError,
    FrameCountError,
    InputNotFoundError,
    NonFiniteInputError,
    OutputExistsError,
    ShapeMismatchError,
)
from operando.io.ingest import build_ct, ingest_ct, ingest_xanes, read_energies
from operando.io.store import COMPLETE_ATTR, open_dataset

volumes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: arrays(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]), shape).filter(
        lambda a: np.isfinite(a).all()
    )
)


@given(vol=volumes, fmt=st.sampled_from(["tif", "npy"]), voxel=st.floats(0.1, 10))
# tifffile stores a (1, 2, 1) volume as one (1, 2) page: frames must take the series' shape.
@example(vol=np.array([[[[0], [1]]]], np.uint8), fmt="tif", voxel=1.0)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ct_round_trip(
    tmp_path_factory: pytest.TempPathFactory, vol: np.ndarray, fmt: str, voxel: float
) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    paths = []
    for t, v in enumerate(vol):
        paths.append(tmp / f"t{t}.{fmt}")
        tifffile.imwrite(
            paths[-1], v, description="2-BM", photometric="minisblack"
        ) if fmt == "tif" else np.save(paths[-1], v)
    times = [0.5 * t for t in range(len(vol))]
    out = ingest_ct(paths, tmp / "cell.zarr", voxel_size_um=voxel, times_min=times)
    ds = open_dataset(out)
    np.testing.assert_array_equal(ds.intensity.values, vol)
    assert ds.intensity.dtype == vol.dtype
    np.testing.assert_array_equal(ds.time.values, times)
    np.testing.assert_allclose(ds.z.values, np.arange(vol.shape[1]) * voxel)
    assert ds.time.attrs["units"] == "min" and ds.x.attrs["units"] == "µm"
    assert ds.attrs["voxel_size_um"] == voxel
    assert ds.attrs["source_files"] == [str(p.resolve()) for p in paths]
    assert (ds.attrs.get("tiff:image_description") == "2-BM") == (fmt == "tif")


def test_ct_dataset_stays_lazy_and_reads_by_frame(tmp_path: Path) -> None:
    vol = np.arange(6 * 32 * 32, dtype=np.uint16).reshape(6, 32, 32)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack")
    ds = build_ct([tmp_path / "v.tif"] * 2, voxel_size_um=1.0)
    data = ds.intensity.data
    assert isinstance(data, da.Array)
    # One task per page read; whole frames per chunk, never the whole volume.
    read_layers = [k for k in data.dask.layers if k.startswith("read-")]
    assert read_layers and all(len(data.dask.layers[k]) == 1 for k in read_layers)
    assert data.chunks[2:] == ((32,), (32,))
    np.testing.assert_array_equal(ds.intensity[1, 4].values, vol[4])


def test_ct_h5_and_folder(tmp_path: Path) -> None:
    import h5py

    vol = np.random.default_rng(3).integers(0, 255, (5, 8, 8), dtype=np.uint8)
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh["exchange/data"] = vol
    (tmp_path / "b").mkdir()
    for i, frame in enumerate(vol):
        tifffile.imwrite(tmp_path / "b" / f"im{i + 1}.tif", frame, photometric="minisblack")
    ds = open_dataset(ingest_ct([tmp_path / "a.h5", tmp_path / "b"], tmp_path / "o.zarr", voxel_size_um=2))
    np.testing.assert_array_equal(ds.intensity.values, np.stack([vol, vol]))


def test_ct_bad_inputs(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 8, 8), np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((5, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(
        ShapeMismatchError,
        match=r"b\.tif: volumes of shape \(5, 8, 8\) differ from .*a\.tif of shape \(4, 8, 8\)",
    ):
        ingest_ct([tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "o.zarr", voxel_size_um=1)
    with pytest.raises(InputNotFoundError, match=r"c\.tif: no such file or folder"):
        ingest_ct([tmp_path / "c.tif"], tmp_path / "o.zarr", voxel_size_um=1)
    assert not (tmp_path / "o.zarr").exists()
    (tmp_path / "o.zarr").mkdir()
    with pytest.raises(OutputExistsError, match=r"o\.zarr: output path exists already.*--overwrite"):
        ingest_ct([tmp_path / "a.tif"], tmp_path / "o.zarr", voxel_size_um=1)


def test_nan_aborts_write_and_leaves_no_complete_marker(tmp_path: Path) -> None:
    vol = np.ones((40, 16, 16), np.float32)
    vol[33, 5, 5] = np.inf
    np.save(tmp_path / "v.npy", vol)
    with pytest.raises(
        NonFiniteInputError, match=r"v\.npy: 1 NaN/inf value\(s\) .* \(33, 5, 5\).*nan_to_num"
    ):
        ingest_ct([tmp_path / "v.npy"], tmp_path / "o.zarr", voxel_size_um=1)
    assert COMPLETE_ATTR not in zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs


def test_read_energies(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("# Ni K edge\n8324.0\n\n8330.5  # pre-edge\n8354\n")
    np.testing.assert_array_equal(read_energies(tmp_path / "e.txt"), [8324.0, 8330.5, 8354.0])
    (tmp_path / "bad.txt").write_text("8324\n8330\n8330\n")
    with pytest.raises(
        EnergyOrderError,
        match=r"bad\.txt: energies are not strictly increasing: 8330 eV is followed by 8330 eV",
    ):
        read_energies(tmp_path / "bad.txt")


def _xanes_files(tmp_path: Path, scans: int, energies: int) -> tuple[np.ndarray, Path, Path, Path]:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 2, (scans, energies, 6, 7))
    flat = rng.uniform(1000, 2000, (energies, 6, 7))
    dark = np.full((3, 6, 7), 50.0)
    sample = (flat - 50) * np.exp(-a) + 50
    tifffile.imwrite(
        tmp_path / "s.tif", sample.reshape(-1, 6, 7).astype(np.float32), photometric="minisblack"
    )
    tifffile.imwrite(tmp_path / "f.tif", flat.astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "d.tif", dark.astype(np.float32), photometric="minisblack")
    return a, tmp_path / "s.tif", tmp_path / "f.tif", tmp_path / "d.tif"


def test_xanes_tiff_with_shared_flat_and_dark(tmp_path: Path) -> None:
    a, s, f, d = _xanes_files(tmp_path, scans=2, energies=3)
    energies = [8330.0, 8340.0, 8350.0]
    out = ingest_xanes(s, f, tmp_path / "x.zarr", energies_ev=energies, dark=d, scans=2, pixel_size_um=0.03)
    ds = open_dataset(out)
    assert ds.absorbance.dims == ("scan", "energy", "y", "x") and ds.absorbance.dtype == np.float32
    np.testing.assert_allclose(ds.absorbance.values, a, atol=1e-4)
    np.testing.assert_array_equal(ds.energy.values, energies)
    assert ds.energy.attrs["units"] == "eV"
    assert ds.x.attrs["units"] == "µm" and ds.x.values[1] == pytest.approx(0.03)
    assert ds.absorbance.attrs["clipped_pixels"] == 0


def test_xanes_clipped_pixels_are_counted(tmp_path: Path) -> None:
    flat = np.full((2, 4, 4), 1000, np.uint16)
    sample = flat.copy()
    sample[1, :2, :] = 0
    tifffile.imwrite(tmp_path / "s.tif", sample, photometric="minisblack")
    tifffile.imwrite(tmp_path / "f.tif", flat, photometric="minisblack")
    ds = open_dataset(
        ingest_xanes(
            tmp_path / "s.tif", tmp_path / "f.tif", tmp_path / "x.zarr", energies_ev=[1, 2], pixel_size_um=1
        )
    )
    assert ds.absorbance.attrs["clipped_pixels"] == 8


def test_xanes_bad_inputs(tmp_path: Path) -> None:
    _, s, f, _ = _xanes_files(tmp_path, scans=2, energies=3)
    out = tmp_path / "x.zarr"
    with pytest.raises(FrameCountError, match=r"s\.tif: 6 frames is not a multiple of 4 energies"):
        ingest_xanes(s, f, out, energies_ev=[1, 2, 3, 4])
    with pytest.raises(FrameCountError, match=r"s\.tif: 6 frames is not 3 scans × 3 energies"):
        ingest_xanes(s, f, out, energies_ev=[1, 2, 3], scans=3)
    with pytest.raises(
        FrameCountError, match=r"s\.tif: flat has 6 frames; expected 3 .* or 3 \(1 scans × 3 energies\)"
    ):
        ingest_xanes(f, s, out, energies_ev=[1, 2, 3])
    with pytest.raises(
        EnergyOrderError, match="energies: energies are not strictly increasing: 3 eV is followed by 2 eV"
    ):
        ingest_xanes(s, f, out, energies_ev=[1, 3, 2])
    with pytest.raises(
        EnergyListError, match=r"s\.tif: the input carries no energies and none were given.*--energies"
    ):
        ingest_xanes(s, f, out)
    tifffile.imwrite(tmp_path / "small.tif", np.ones((3, 5, 5), np.float32), photometric="minisblack")
    with pytest.raises(ShapeMismatchError, match=r"small\.tif: frames of shape \(3, 5, 5\) differ"):
        ingest_xanes(s, tmp_path / "small.tif", out, energies_ev=[1, 2, 3])
    with pytest.raises(
        ConfigError, match=r"--pixel-size: .*s\.tif carries no pixel size\. Pass --pixel-size"
    ):
        ingest_xanes(s, f, out, energies_ev=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"--pixel-size: pixel size -1.0 µm must be a positive number"):
        ingest_xanes(s, f, out, energies_ev=[1, 2, 3], pixel_size_um=-1.0)
    assert not out.exists()


@pytest.mark.slow
def test_ingest_peak_memory_is_far_below_input_size(tmp_path: Path) -> None:
    """A 400 MB TIFF streams through 8 MiB chunks: peak RSS grows by a small fraction of it."""
    frames, shape = 800, (512, 512)
    with tifffile.TiffWriter(tmp_path / "big.tif") as tw:
        for i in range(frames):
            tw.write(np.full(shape, i, np.uint16), contiguous=True)
    size = (tmp_path / "big.tif").stat().st_size
    script = f"""
import json, resource
from operando.config import config
from operando.io.ingest import ingest_ct
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with config.set({{"chunks.target_mib": 8}}):
    ingest_ct([{str(tmp_path / "big.tif")!r}], {str(tmp_path / "o.zarr")!r}, voxel_size_um=1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth": (after - before) * 1024}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth"]
    # Measured 67 MiB of growth for this 400 MB input (it was 240 MiB before windowed reads).
    assert growth < 0.3 * size, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB input"
    )
    assert int(open_dataset(tmp_path / "o.zarr").intensity[0, 799, 0, 0]) == 799
