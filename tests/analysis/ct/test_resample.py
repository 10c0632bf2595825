"""Blockwise resampling against whole-array scipy and the phantom's reference frame."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from operando.analysis.ct.resample import apply_transforms, voxel_maps
from operando.errors import RegistrationError
from operando.synth.ct import CLASS_INTENSITY, make_ct


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
