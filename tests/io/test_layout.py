"""The dataset model: dims, coordinates, units, labels; builders stay lazy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operando.io.layout import (
    CT_DIMS,
    XANES_DIMS,
    ct_dataset,
    label_attrs,
    label_classes,
    spatial_coord,
    xanes_dataset,
)
from operando.io.store import open_dataset, write_dataset


def _explode(block):
    raise AssertionError("the builder computed its input")


def lazy(shape, dtype=np.float32):
    """A dask array that fails if anything computes it."""
    return da.zeros(shape, dtype=dtype, chunks=shape).map_blocks(_explode, dtype=dtype)


def test_ct_dataset_dims_coords_units():
    ds = ct_dataset(np.ones((3, 4, 5, 6), np.float32), voxel_size_um=0.65, times_min=[0, 7.5, 15])
    var = ds["intensity"]
    assert var.dims == CT_DIMS == ("time", "z", "y", "x")
    assert var.attrs["units"] == "1"
    np.testing.assert_array_equal(ds["time"], [0, 7.5, 15])
    assert ds["time"].attrs["units"] == "min"
    for dim, n in zip("zyx", (4, 5, 6), strict=True):
        assert ds[dim].attrs["units"] == "µm"
        np.testing.assert_allclose(ds[dim], np.arange(n) * 0.65)
    assert ds.attrs["modality"] == "ct"
    assert ds.attrs["voxel_size_um"] == 0.65
    assert ds.attrs["normal_axis"] == "z"


def test_ct_dataset_default_times_attrs_and_name():
    ds = ct_dataset(np.ones((2, 1, 1, 1)), voxel_size_um=1, attrs={"beamline": "2-BM"}, name="attenuation")
    assert list(ds.data_vars) == ["attenuation"]
    np.testing.assert_array_equal(ds["time"], [0.0, 1.0])
    assert ds.attrs["beamline"] == "2-BM"


def test_builders_stay_lazy():
    ct = ct_dataset(lazy((2, 3, 4, 5)), voxel_size_um=1)
    assert isinstance(ct["intensity"].data, da.Array)
    xa = xanes_dataset({"counts": lazy((1, 3, 4, 5), np.uint16)}, energies_ev=[1, 2, 3], pixel_size_um=1)
    assert isinstance(xa["counts"].data, da.Array)
    with pytest.raises(AssertionError, match="computed its input"):
        ct["intensity"].compute()


def test_xanes_dataset_dims_coords_units():
    energies = [8330.0, 8340.0, 8350.5]
    ds = xanes_dataset(
        {"counts": np.ones((2, 3, 4, 5), np.uint16), "absorbance": np.zeros((2, 3, 4, 5), np.float32)},
        energies_ev=energies,
        pixel_size_um=0.03,
        attrs={"edge": "Ni K"},
    )
    assert ds["counts"].dims == ds["absorbance"].dims == XANES_DIMS == ("scan", "energy", "y", "x")
    assert ds["counts"].attrs["units"] == "counts"
    assert ds["absorbance"].attrs["units"] == "1"
    assert ds["energy"].attrs["units"] == "eV"
    np.testing.assert_array_equal(ds["energy"], energies)
    np.testing.assert_array_equal(ds["scan"], [0, 1])
    assert ds["y"].attrs["units"] == ds["x"].attrs["units"] == "µm"
    np.testing.assert_allclose(ds["x"], np.arange(5) * 0.03)
    assert ds.attrs == {"modality": "xanes", "pixel_size_um": 0.03, "edge": "Ni K"}


def test_spatial_coord():
    c = spatial_coord("y", 4, 2.5)
    assert c.dims == ("y",)
    np.testing.assert_array_equal(c.values, [0, 2.5, 5, 7.5])
    assert c.attrs["units"] == "µm"


CLASS = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)


@given(st.lists(CLASS, min_size=1, max_size=256, unique=True))
def test_label_attrs_round_trip(classes):
    import xarray as xr

    attrs = label_attrs(classes)
    assert attrs["flag_values"] == list(range(len(classes)))
    var = xr.DataArray(np.zeros(3, np.uint8), dims="x", attrs=attrs)
    assert label_classes(var) == dict(enumerate(classes))


def test_label_names_with_spaces_become_underscores():
    import xarray as xr

    attrs = label_attrs(["pore", "active material", "carbon binder"])
    assert attrs["flag_meanings"] == "pore active_material carbon_binder"
    var = xr.DataArray(np.zeros(1, np.uint8), dims="x", attrs=attrs)
    assert label_classes(var) == {0: "pore", 1: "active_material", 2: "carbon_binder"}


def test_256_classes_fit_uint8_but_257_do_not():
    assert label_attrs([f"c{i}" for i in range(256)])["flag_values"][-1] == 255
    with pytest.raises(ValueError, match="257 classes do not fit uint8 labels"):
        label_attrs([f"c{i}" for i in range(257)])


def test_labels_round_trip_through_a_store(tmp_path):
    classes = ["pore", "NMC", "carbon binder"]
    labels = np.random.default_rng(0).integers(0, 3, (2, 4, 5, 6), dtype=np.uint8)
    ds = ct_dataset(np.zeros((2, 4, 5, 6), np.float32), voxel_size_um=1)
    ds["labels"] = (CT_DIMS, labels, label_attrs(classes))
    back = open_dataset(write_dataset(ds, tmp_path / "l.zarr"))
    assert back["labels"].dtype == np.uint8
    np.testing.assert_array_equal(back["labels"], labels)
    assert label_classes(back["labels"]) == {0: "pore", 1: "NMC", 2: "carbon_binder"}
