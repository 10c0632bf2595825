"""Blockwise resampling against whole-array scipy and the phantom's reference frame."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from pathlib import Path

import dask
import dask.array
import dask.callbacks
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from operando.analysis.ct.register import RegistrationOptions, write_transforms_csv
from operando.analysis.ct.resample import _resample_task, apply_transforms, register_dataset, voxel_maps
from operando.errors import IncompleteDatasetError, RegistrationError
from operando.io import open_dataset
from operando.io.store import COMPLETE_ATTR
from operando.synth.ct import CLASS_INTENSITY, make_ct, synth_ct


def transforms_of(angles, shifts_um, centre_um, converged=None, voxel=1.0):
    t = len(angles)
    return xr.Dataset(
        {
            "angles_deg": (("time", "axis"), np.asarray(angles, float)),
            "translation_um": (("time", "axis"), np.asarray(shifts_um, float)),
            "centre_um": ("axis", np.asarray(centre_um, float)),
            "converged": ("time", np.ones(t, bool) if converged is None else np.asarray(converged)),
        },
        attrs={"reference_time_index": t - 1, "voxel_size_um": voxel},
    )


def zarr_pair(values, chunks):
    src = zarr.create_array({}, shape=values.shape, chunks=(1, *chunks), dtype=values.dtype)
    src[...] = values
    out = zarr.create_array({}, shape=values.shape, chunks=(1, *chunks), dtype=values.dtype, fill_value=0)
    return src, out


@settings(max_examples=8, deadline=None)
@given(
    chunks=st.tuples(*[st.integers(3, 12)] * 3),
    angles=st.tuples(*[st.floats(-3, 3)] * 3),
    shift=st.tuples(*[st.floats(-2, 2)] * 3),
)
def test_blockwise_equals_whole_array_map_coordinates(chunks, angles, shift):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 10, 12, 11)).astype(np.float64)
    tr = transforms_of([angles, (0, 0, 0)], [shift, (0, 0, 0)], (4.5, 5.5, 5.0))
    src, out = zarr_pair(values, chunks)
    apply_transforms(src, tr, out, order=1)
    affine = voxel_maps(tr, 1.0, (0, 0, 0))[0]
    grid = np.indices(values.shape[1:], dtype=np.float64)
    coords = np.tensordot(affine[:, :3], grid, axes=1) + affine[:, 3, None, None, None]
    want = ndimage.map_coordinates(values[0], coords, order=1, mode="nearest")
    outside = np.any([(c < 0) | (c > n - 1) for c, n in zip(coords, values.shape[1:], strict=True)], axis=0)
    want[outside] = np.nan
    np.testing.assert_allclose(out[0], want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[1], values[1])


def test_true_transform_restores_reference_labels():
    data, truth = make_ct(shape=(2, 32, 40, 40), seed=2, noise_sigma=0.0, blur_sigma_voxels=0.0)
    values = data.intensity.values
    src, out = zarr_pair(values, (16, 16, 16))
    tr = transforms_of(
        truth.angles_deg.values, truth.translation_um.values, truth.rotation_centre_um.values, voxel=1.33
    )
    apply_transforms(src, tr, out, order=0, fill_value=-1.0)
    labels = np.abs(out[0][..., None] - CLASS_INTENSITY).argmin(axis=-1)
    inside = out[0] >= 0
    agree = (labels == truth.labels.values[0])[inside].mean()
    assert inside.mean() > 0.8 and agree > 0.97


def test_refuses_a_failed_transform():
    values = np.zeros((2, 4, 4, 4))
    src, out = zarr_pair(values, (4, 4, 4))
    tr = transforms_of([(0, 0, 0)] * 2, [(0, 0, 0)] * 2, (1.5, 1.5, 1.5), converged=[False, True])
    with pytest.raises(RegistrationError, match="timestep 0"):
        apply_transforms(src, tr, out)
    apply_transforms(src, tr, out, apply_failed=True)


# A cell frozen at the end of charge: only the rigid motion changes between timesteps.
STATIC = {"times_min": [999.998, 999.999, 1000.0], "charge_end_min": 1000.0}
PHANTOM = {"shape": (3, 48, 64, 64), "seed": 1, "voxel_size_um": 1.33, **STATIC}
FAST = RegistrationOptions(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0))


def checksums(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A frozen phantom on disk, registered by ``register_dataset``; the input's checksums around it."""
    tmp = tmp_path_factory.mktemp("register")
    store = synth_ct(tmp / "in.zarr", **PHANTOM)
    before = checksums(store)
    with dask.config.set(scheduler="threads"):
        est = register_dataset(store, tmp / "out.zarr", sub_volume_size=64, sub_volumes=1, options=FAST)
    return store, tmp / "out.zarr", est, before


def test_register_dataset_writes_the_reference_frame(registered, tmp_path):
    store, out_path, est, _ = registered
    src, out = open_dataset(store), open_dataset(out_path)
    assert isinstance(out.intensity.data, dask.array.Array)
    for dim in ("time", "z", "y", "x"):
        np.testing.assert_array_equal(out[dim], src[dim])
    assert {k: v for k, v in src.attrs.items() if k != COMPLETE_ATTR}.items() <= out.attrs.items()
    for name in ("angles_deg", "translation_um", "centre_um", "metric", "converged", "iterations"):
        np.testing.assert_array_equal(out[name], est[name])
    reg = out.attrs["registration"]
    assert reg["reference_time_index"] == 2
    np.testing.assert_allclose(reg["angles_deg"], est.angles_deg.values)
    # Oracle: the input resampled by the true motion; noise keeps its correlation below 1.
    truth = open_dataset(store, group="truth")
    true_tr = transforms_of(
        truth.angles_deg.values, truth.translation_um.values, truth.rotation_centre_um.values, voxel=1.33
    )
    source = src.intensity.values
    oracle, _ = zarr_pair(source, (16, 32, 32))
    apply_transforms(zarr_pair(source, (16, 32, 32))[0], true_tr, oracle)
    reference = source[-1]
    for t in range(2):
        moved = out.intensity[t].values
        inside = np.isfinite(moved) & np.isfinite(oracle[t])
        r = [np.corrcoef(v[inside], reference[inside])[0, 1] for v in (source[t], moved, oracle[t])]
        assert inside.mean() > 0.8 and r[1] > r[2] - 0.01 and r[1] > r[0] + 0.1, r
    table = pd.read_csv(write_transforms_csv(out, tmp_path / "t.csv"))
    xyz = [f"{q}_{a}_{u}" for q, u in (("angle", "deg"), ("shift", "um"), ("centre", "um")) for a in "zyx"]
    assert list(table.columns) == ["time", "time_min", *xyz, "metric", "converged"]
    np.testing.assert_allclose(table["centre_y_um"], est.centre_um.values[1])
    np.testing.assert_allclose(table["shift_x_um"], est.translation_um.values[:, 2])
    assert table["converged"].all()


def test_estimated_transforms_restore_the_truth_labels(registered):
    _, _, est, _ = registered
    # The same cell and motion without noise and blur: classes are read off the intensity.
    clean, truth = make_ct(**PHANTOM, noise_sigma=0.0, blur_sigma_voxels=0.0)
    src, out = zarr_pair(clean.intensity.values, (16, 32, 32))
    apply_transforms(src, est, out, order=0, fill_value=-1.0)
    reference = truth.labels.values[-1]
    for t in range(2):
        labels = np.abs(out[t][..., None] - CLASS_INTENSITY).argmin(axis=-1)
        inside = out[t] >= 0
        assert (labels == reference)[inside].mean() > 0.95


def test_register_dataset_leaves_the_input_alone(registered):
    store, _, _, before = registered
    assert checksums(store) == before


class Interrupt(dask.callbacks.Callback):
    """Raise after the first resampling task, as a killed run would stop."""

    def _posttask(self, key, result, dsk, state, worker_id):
        if "_resample_task" in str(key):
            raise KeyboardInterrupt


def test_interrupted_output_is_not_complete(registered, tmp_path):
    store = registered[0]
    with dask.config.set(scheduler="synchronous"), Interrupt(), pytest.raises(KeyboardInterrupt):
        register_dataset(store, tmp_path / "out.zarr", sub_volume_size=64, sub_volumes=1, options=FAST)
    with pytest.raises(IncompleteDatasetError, match="never marked complete"):
        open_dataset(tmp_path / "out.zarr")


@pytest.fixture(scope="module")
def chunked_store(tmp_path_factory):
    """A (2, 128, 256, 256) float32 series on disk in 8 MiB chunks, and a transform of timestep 0."""
    path = tmp_path_factory.mktemp("slabs") / "src.zarr"
    chunks = (1, 128, 128, 128)
    src = zarr.create_array(str(path), shape=(2, 128, 256, 256), chunks=chunks, dtype="float32")
    rng = np.random.default_rng(4)
    z, y, x = np.ogrid[:128, :128, :128]
    for t, iy, ix in np.ndindex(2, 2, 2):
        smooth = np.sin(z / 9.0) + np.cos((y + 128 * iy) / 13.0) * np.sin((x + 128 * ix) / 7.0)
        block = (smooth + rng.normal(scale=0.05, size=smooth.shape)).astype(np.float32)
        src[t, :, iy * 128 : (iy + 1) * 128, ix * 128 : (ix + 1) * 128] = block
    # Shifted towards the next chunks: the first chunk's source box spans four source chunks.
    tr = transforms_of([(0.6, -0.8, 0.7), (0, 0, 0)], [(2.5, 3.5, 3.0), (0, 0, 0)], (64, 128, 128))
    affine = [voxel_maps(tr, 1.0, (0, 0, 0))[0], None]
    return src, affine, chunks


def _empty_like(src: zarr.Array) -> zarr.Array:
    return zarr.create_array({}, shape=src.shape, chunks=src.chunks, dtype=src.dtype, fill_value=np.nan)


def test_a_chunk_is_resampled_in_memory_proportional_to_the_chunk(chunked_store):
    src, affine, chunks = chunked_store
    region = tuple(slice(0, c) for c in chunks)
    chunk_bytes = 4 * int(np.prod(chunks))
    slabbed, whole = _empty_like(src), _empty_like(src)
    gc.collect()
    tracemalloc.start()
    try:
        _resample_task(src, slabbed, region, affine, 1, np.nan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The output chunk, one decoded source chunk with its compressed bytes, and a slab:
    # reading the whole box at once decodes its four source chunks together (measured 14.7x).
    assert peak < 4.5 * chunk_bytes, peak / chunk_bytes
    _resample_task(src, whole, region, affine, 1, np.nan, read_bytes=1 << 40)
    np.testing.assert_array_equal(slabbed[region], whole[region])
    assert np.isfinite(whole[region]).mean() > 0.9
