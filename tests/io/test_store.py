"""operando datasets on disk: round trips, the completion marker, safe outputs."""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from operando.config import config
from operando.errors import (
    DatasetLayoutError,
    IncompleteDatasetError,
    InputNotFoundError,
    OutputExistsError,
)
from operando.io.chunking import choose_chunks
from operando.io.layout import ct_dataset, xanes_dataset
from operando.io.store import (
    COMPLETE_ATTR,
    mark_complete,
    missing_chunks,
    open_dataset,
    prepare_output,
    write_dataset,
)


def meta(path: Path, name: str = "") -> dict:
    return json.loads((Path(path) / name / "zarr.json").read_text())


def drop_marker(path: Path) -> None:
    """Remove the completion marker from the root zarr.json (as a crash before it would)."""
    root = meta(path)
    root["attributes"].pop(COMPLETE_ATTR)
    root.pop("consolidated_metadata", None)
    (path / "zarr.json").write_text(json.dumps(root))


def ct(shape=(3, 4, 5, 6), dtype=np.float32, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 100).astype(dtype)
    return ct_dataset(data, voxel_size_um=0.5, times_min=np.arange(shape[0]) * 2.5, attrs={"sample": "A1"})


# -- round trips -----------------------------------------------------------------


def test_round_trip_values_coords_attrs(tmp_path):
    ds = ct()
    path = write_dataset(ds, tmp_path / "a.zarr")
    back = open_dataset(path)
    xr.testing.assert_identical(back.drop_attrs(deep=False), ds.drop_attrs(deep=False))
    assert back["intensity"].dims == ("time", "z", "y", "x")
    assert back["intensity"].attrs["units"] == "1"
    assert back["time"].attrs["units"] == "min"
    assert back["x"].attrs["units"] == "µm"
    assert back.attrs["sample"] == "A1"
    assert back.attrs["operando:version"]
    assert COMPLETE_ATTR in back.attrs


def test_dimension_names_in_every_array(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    expected = {"intensity": ["time", "z", "y", "x"], "time": ["time"], "z": ["z"], "y": ["y"], "x": ["x"]}
    for name, dims in expected.items():
        m = meta(path, name)
        assert m["zarr_format"] == 3
        assert m["dimension_names"] == dims


def test_plain_open_zarr_is_consolidated_and_quiet(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    root = meta(path)
    assert set(root["consolidated_metadata"]["metadata"]) >= {"intensity", "time", "z", "y", "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds["intensity"], ct()["intensity"])


def test_lazy_dataset_round_trip(tmp_path):
    data = da.random.default_rng(1).random((4, 8, 8, 8), chunks=(2, 4, 8, 8)).astype(np.float32)
    ds = ct_dataset(data, voxel_size_um=1)
    back = open_dataset(write_dataset(ds, tmp_path / "a.zarr"))
    assert isinstance(back["intensity"].data, da.Array)
    np.testing.assert_array_equal(back["intensity"], data.compute())


def test_xanes_round_trip(tmp_path):
    counts = np.arange(2 * 5 * 3 * 4, dtype=np.uint16).reshape(2, 5, 3, 4)
    ds = xanes_dataset({"counts": counts}, energies_ev=[8330, 8340, 8345, 8350, 8360], pixel_size_um=0.03)
    back = open_dataset(write_dataset(ds, tmp_path / "x.zarr"))
    np.testing.assert_array_equal(back["counts"], counts)
    np.testing.assert_array_equal(back["energy"], [8330, 8340, 8345, 8350, 8360])
    assert back["energy"].attrs["units"] == "eV"
    assert meta(tmp_path / "x.zarr", "counts")["dimension_names"] == ["scan", "energy", "y", "x"]


DTYPES = st.sampled_from(["uint8", "uint16", "int16", "int32", "float32", "float64"])


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        DTYPES,
        hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=6),
        elements={"allow_nan": False, "allow_infinity": False},
    ),
    st.floats(0.001, 1e-4 * 1024),
)
def test_round_trip_any_dtype_and_shape(data, target_mib):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(
            ct_dataset(data, voxel_size_um=1), Path(tmp) / "a.zarr", target_mib=target_mib, energy_chunk=2
        )
        back = open_dataset(path)["intensity"]
        assert back.dtype == data.dtype
        np.testing.assert_array_equal(back.values, data)
        assert back.encoding["chunks"] == choose_chunks(
            data.shape, data.dtype, ("time", "z", "y", "x"), target_mib=target_mib
        )


def test_integers_stay_integers(tmp_path):
    labels = np.array([[[[0, 1, 2, 255]]]], dtype=np.uint8)
    counts = np.array([[[[0, 7, 65535, 3]]]], dtype=np.uint16)
    ds = ct_dataset(labels, voxel_size_um=1, name="labels")
    ds["counts"] = (("time", "z", "y", "x"), da.from_array(counts))
    path = write_dataset(ds, tmp_path / "a.zarr")
    for name in ("labels", "counts"):
        assert "_FillValue" not in meta(path, name)["attributes"]
    back = open_dataset(path)
    assert back["labels"].dtype == np.uint8
    assert back["counts"].dtype == np.uint16
    np.testing.assert_array_equal(back["labels"], labels)
    np.testing.assert_array_equal(back["counts"], counts)
    plain = xr.open_zarr(path)
    assert plain["labels"].dtype == np.uint8


# -- chunks and codecs -----------------------------------------------------------


def test_chunks_on_disk_follow_the_policy(tmp_path):
    shape = (3, 40, 64, 64)
    with config.set({"chunks.target_mib": 0.05}):
        path = write_dataset(ct(shape), tmp_path / "a.zarr")
    expected = choose_chunks(shape, np.float32, ("time", "z", "y", "x"), target_mib=0.05)
    assert expected[0] == 1 and math.prod(expected) < math.prod(shape[1:])  # really chunked
    arr = zarr.open_array(str(path / "intensity"), mode="r")
    assert arr.chunks == expected
    assert arr.nchunks_initialized == arr.nchunks
    assert open_dataset(path)["intensity"].data.chunksize == expected


def test_energy_chunk_from_config(tmp_path):
    shape = (2, 10, 3, 4)
    ds = xanes_dataset({"absorbance": np.ones(shape, np.float32)}, energies_ev=range(10), pixel_size_um=1)
    with config.set({"chunks.energy": 4}):
        path = write_dataset(ds, tmp_path / "x.zarr")
    assert zarr.open_array(str(path / "absorbance"), mode="r").chunks == (1, 4, 3, 4)


@pytest.mark.parametrize(
    ("name", "level", "codecs"),
    [
        ("zstd", 5, [("zstd", {"level": 5})]),
        ("blosc-zstd", 1, [("blosc", {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"})]),
        ("blosc-lz4", 3, [("blosc", {"cname": "lz4", "clevel": 3, "shuffle": "shuffle"})]),
        ("none", 3, []),
    ],
)
def test_codec_recorded_as_configured(tmp_path, name, level, codecs):
    with config.set({"codec.name": name, "codec.level": level}):
        path = write_dataset(ct(), tmp_path / "a.zarr")
    for var in ("intensity", "time"):
        chain = meta(path, var)["codecs"]
        assert chain[0]["name"] == "bytes"
        assert [c["name"] for c in chain[1:]] == [n for n, _ in codecs]
        for got, (_, conf) in zip(chain[1:], codecs, strict=True):
            assert conf.items() <= got["configuration"].items()
    np.testing.assert_array_equal(open_dataset(path)["intensity"], ct()["intensity"])


def test_default_codec_is_blosc_zstd(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    conf = meta(path, "intensity")["codecs"][1]["configuration"]
    assert (conf["cname"], conf["clevel"], conf["shuffle"]) == ("zstd", 3, "bitshuffle")


# -- completeness ----------------------------------------------------------------


def test_marker_is_written_after_every_chunk(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    assert COMPLETE_ATTR in meta(path)["attributes"]
    marker_time = (path / "zarr.json").stat().st_mtime_ns
    others = [p for p in path.rglob("*") if p.is_file() and p != path / "zarr.json"]
    assert others
    assert all(p.stat().st_mtime_ns <= marker_time for p in others)
    assert missing_chunks(path) == {}


def test_missing_chunk_without_marker_is_refused(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    (path / "intensity" / "c" / "1" / "0" / "0" / "0").unlink()
    drop_marker(path)
    assert missing_chunks(path) == {"intensity": (1, 3, (1, 0, 0, 0))}
    with pytest.raises(
        IncompleteDatasetError,
        match=r"never marked complete \(intensity: 1 of 3 chunks \(first at chunk index \(1, 0, 0, 0\)\)\)",
    ):
        open_dataset(path)
    with pytest.raises(IncompleteDatasetError, match=r"cannot mark complete, chunks are missing: intensity"):
        mark_complete(path)
    assert COMPLETE_ATTR not in meta(path)["attributes"]
    partial = open_dataset(path, require_complete=False)
    assert np.isnan(partial["intensity"][1]).all()


def test_missing_marker_alone_is_refused(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    drop_marker(path)
    with pytest.raises(
        IncompleteDatasetError, match="every chunk is present but the marker was never written"
    ):
        open_dataset(path)
    mark_complete(path)
    np.testing.assert_array_equal(open_dataset(path)["intensity"], ct()["intensity"])


def _fail_on_third(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 2:
        raise OSError("disk vanished")
    return block


def test_write_failing_midway_leaves_no_marker(tmp_path):
    data = da.ones((4, 3, 4, 5), dtype=np.float32, chunks=(1, 3, 4, 5)).map_blocks(
        _fail_on_third, dtype=np.float32
    )
    path = tmp_path / "a.zarr"
    with pytest.raises(OSError, match="disk vanished"):
        write_dataset(ct_dataset(data, voxel_size_um=1), path)
    assert path.exists()
    assert COMPLETE_ATTR not in meta(path)["attributes"]
    assert "intensity" in missing_chunks(path)
    with pytest.raises(IncompleteDatasetError, match=r"never marked complete \(intensity: \d of 4 chunks"):
        open_dataset(path)
    with pytest.raises(OutputExistsError, match="output path exists already"):
        write_dataset(ct_dataset(data, voxel_size_um=1), path)


def test_open_refuses_what_is_not_a_dataset(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nope\.zarr: no such dataset"):
        open_dataset(tmp_path / "nope.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"not a zarr v3 store \(no zarr\.json\)"):
        open_dataset(tmp_path / "folder")


# -- groups ----------------------------------------------------------------------


def test_truth_group(tmp_path):
    path = tmp_path / "synth.zarr"
    main = ct()
    truth = ct_dataset(
        np.arange(3 * 4 * 5 * 6, dtype=np.uint8).reshape(3, 4, 5, 6), voxel_size_um=0.5, name="labels"
    )
    write_dataset(main, path, complete=False)
    with pytest.raises(IncompleteDatasetError, match="marker was never written"):
        open_dataset(path)
    write_dataset(truth, path, group="truth", complete=False)
    with pytest.raises(IncompleteDatasetError):
        open_dataset(path, group="truth")
    mark_complete(path)
    np.testing.assert_array_equal(open_dataset(path)["intensity"], main["intensity"])
    back = open_dataset(path, group="truth")
    assert list(back.data_vars) == ["labels"]
    assert back["labels"].dtype == np.uint8
    np.testing.assert_array_equal(back["labels"], truth["labels"])
    assert meta(path, "truth/labels")["dimension_names"] == ["time", "z", "y", "x"]


def test_missing_chunk_in_a_group_is_named(tmp_path):
    path = tmp_path / "synth.zarr"
    write_dataset(ct(), path, complete=False)
    write_dataset(ct(seed=1), path, group="truth", complete=False)
    (path / "truth" / "intensity" / "c" / "2" / "0" / "0" / "0").unlink()
    with pytest.raises(
        IncompleteDatasetError,
        match=r"truth/intensity: 1 of 3 chunks \(first at chunk index \(2, 0, 0, 0\)\)",
    ):
        mark_complete(path)


# -- outputs ---------------------------------------------------------------------


def test_prepare_output_refuses_an_existing_path(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    with pytest.raises(
        OutputExistsError, match=r"a\.zarr: output path exists already\. Choose another output path"
    ):
        prepare_output(path)
    with pytest.raises(FileExistsError, match="exists already"):
        write_dataset(ct(seed=1), path)
    np.testing.assert_array_equal(open_dataset(path)["intensity"], ct()["intensity"])


def test_overwrite_replaces_a_zarr_store(tmp_path):
    path = write_dataset(ct(), tmp_path / "a.zarr")
    write_dataset(ct((2, 3, 3, 3), seed=5), path, overwrite=True)
    back = open_dataset(path)
    assert back["intensity"].shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(back["intensity"], ct((2, 3, 3, 3), seed=5)["intensity"])
    assert prepare_output(path, overwrite=True) == path
    assert not path.exists()


def test_overwrite_never_deletes_a_plain_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="is not a zarr store, so --overwrite will not delete it"):
        prepare_output(folder, overwrite=True)
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        write_dataset(ct(), folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "precious"


def test_output_equal_to_or_containing_an_input_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "in.zarr"
    write_dataset(ct(), src)
    with pytest.raises(OutputExistsError, match="the output would overwrite the input"):
        prepare_output(src, overwrite=True, inputs=(src,))
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        prepare_output(tmp_path, overwrite=True, inputs=(src,))
    # The same path spelled differently is still the input.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        prepare_output(Path("sub/../in.zarr"), overwrite=True, inputs=(src,))
    assert open_dataset(src)["intensity"].shape == (3, 4, 5, 6)


def test_output_inside_an_input_folder_is_refused(tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    (slices / "im001.tif").write_bytes(b"II*\0")
    with pytest.raises(OutputExistsError, match=r"would be written inside the input .*slices"):
        prepare_output(slices / "out.zarr", inputs=(slices,))
    assert prepare_output(tmp_path / "out.zarr", inputs=(slices,)) == tmp_path / "out.zarr"


# -- real data -------------------------------------------------------------------


def test_real_ct_slices_round_trip(shared_data, tmp_path):
    import tifffile

    files = sorted((shared_data / "ct" / "cylindrical-cell").glob("im0[0-1][0-9].tif"))[:12]
    vol = np.stack([tifffile.imread(f) for f in files])[None]
    assert vol.shape == (1, 12, 728, 728) and vol.dtype == np.uint8
    path = write_dataset(ct_dataset(vol, voxel_size_um=1), tmp_path / "cell.zarr")
    back = open_dataset(path)["intensity"]
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, vol)
    stored = sum(p.stat().st_size for p in (path / "intensity" / "c").rglob("*") if p.is_file())
    assert stored < vol.nbytes / 1.5  # blosc-zstd compresses real 8-bit CT about 2×


def test_real_electrode_labels_keep_their_phase_fractions(shared_data, tmp_path):
    import tifffile

    from operando.io.layout import label_attrs, label_classes

    grey = np.asarray(tifffile.imread(shared_data / "ct" / "taufactor" / "electrode.tiff"))
    labels = (grey // 85).astype(np.uint8)[None]
    ds = ct_dataset(labels, voxel_size_um=1, name="labels")
    ds["labels"].attrs.update(label_attrs(["pore", "NMC", "carbon binder"]))
    back = open_dataset(write_dataset(ds, tmp_path / "e.zarr"))["labels"]
    assert label_classes(back) == {0: "pore", 1: "NMC", 2: "carbon_binder"}
    fractions = np.bincount(back.values.ravel(), minlength=3) / back.size
    np.testing.assert_allclose(fractions, [0.4499, 0.4005, 0.1496], atol=2e-3)
