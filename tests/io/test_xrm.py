"""Real Xradia frames from SSRL 6-2c (NCA particles at the Ni K-edge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operando.errors import TruncatedFileError
from operando.io.ingest import ingest_xanes
from operando.io.readers import read_xrm
from operando.io.readers.xrm import read_xrm_header
from operando.io.store import open_dataset


@pytest.fixture(scope="module")
def ssrl(shared_data: Path) -> Path:
    path = shared_data / "txm-ssrl"
    if not path.is_dir():
        pytest.skip("txm-ssrl data absent")
    return path


@pytest.fixture
def rep01(ssrl: Path, tmp_path: Path) -> Path:
    """The intact frames only (links, so the inputs are untouched)."""
    folder = tmp_path / "rep01"
    folder.mkdir()
    for f in ssrl.glob("rep01_*.xrm"):
        (folder / f.name).symlink_to(f)
    return folder


def test_header_and_frame(ssrl: Path) -> None:
    path = ssrl / "rep01_20161456_ssrl-test-data_08324.0_eV_001of003.xrm"
    header = read_xrm_header(path)
    assert header.shape == (1, 1024, 1024) and header.dtype == np.uint16
    assert header.pixel_size_um == 0.0312
    assert header.energies_ev.tolist() == [8324.0]  # the header says 0: taken from the name
    assert header.scan == 1
    frame = read_xrm(path)
    assert frame.data.shape == (1, 1024, 1024)
    assert 0 < frame.data.mean().compute() < 65535


@pytest.mark.parametrize(
    "name",
    [
        "rep02_000072_ref_20161456_ssrl-test-data_08348.0_eV_002of010.xrm",
        "rep02_000182_ref_20161456_ssrl-test-data_08400.0_eV_002of010.xrm",
    ],
)
def test_truncated_files_are_named(ssrl: Path, name: str) -> None:
    with pytest.raises(TruncatedFileError, match=rf"{name}: .*(missing|too short).*copy it again"):
        read_xrm_header(ssrl / name)


def test_whole_folder_fails_on_its_truncated_references(ssrl: Path, tmp_path: Path) -> None:
    with pytest.raises(
        TruncatedFileError, match=r"rep02_000072_ref_.*\.xrm: image stream ImageData1/Image1 is missing"
    ):
        ingest_xanes(ssrl, ssrl, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_ingest_gives_plausible_absorbance(rep01: Path, tmp_path: Path) -> None:
    ds = open_dataset(ingest_xanes(rep01, rep01, tmp_path / "x.zarr"))
    a = ds.absorbance
    assert a.shape == (1, 2, 1024, 1024)
    np.testing.assert_array_equal(ds.energy.values, [8324.0, 8354.0])
    assert ds.attrs["pixel_size_um"] == 0.0312 and ds.x.attrs["units"] == "µm"
    assert ds.attrs["xrm:frames_averaged"] == [3, 3]
    values = a.values[0]
    assert np.isfinite(values).all() and a.attrs["clipped_pixels"] == 0
    below, above = values
    # Particles absorb more than the background (a long upper tail) ...
    assert np.percentile(below, 99) - np.median(below) > 0.2
    # ... and more above the Ni K-edge (~8333-8345 eV) than below it.
    particles = above > np.percentile(above, 90)
    assert above[particles].mean() > below[particles].mean() + 0.2
