"""Particle detection on the XANES phantom, on hand-made scenes and on real TXM frames."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from operando.analysis.xanes.detect import (
    NoParticlesError,
    ParticleSizeError,
    detect_particles,
    edge_jump_image,
    reference_image,
)
from operando.errors import InputError, ShapeMismatchError
from operando.io.xanes import absorbance, lazy_absorbance
from operando.synth.xanes import make_xanes

TXM = Path("/work/shared/data/txm-ssrl")


@pytest.fixture(scope="module")
def phantom():
    data, truth = make_xanes(shape=(2, 21, 256, 256), n_particles=9, n_debris=3)
    stack = lazy_absorbance(data.counts.data, data.flat.data, data.dark.data)
    energies = data.energy.values
    with dask.config.set(scheduler="threads"):
        ref, jump = dask.compute(reference_image(stack, energies), edge_jump_image(stack, energies))
    return ref, jump, truth


def _disks(centres, radius, shape=(96, 96)):
    yy, xx = np.indices(shape)
    out = np.zeros(shape)
    for cy, cx in centres:
        out += np.clip(1 - np.hypot(yy - cy, xx - cx) / radius, 0, None) > 0
    return out


def test_all_phantom_particles_found_and_no_debris(phantom):
    ref, jump, truth = phantom
    found = detect_particles(ref, edge_jump=jump)
    labels = truth.labels.values
    matched = [
        np.bincount(labels[found.labels == p + 1], minlength=13)[1:].argmax() for p in range(len(found))
    ]
    assert len(found) == 9
    assert sorted(matched) == list(range(9))  # one detection per particle, no debris (labels 10-12)
    assert not truth.is_debris.values[matched].any()
    true_centres = truth.reference_centre_px.values[matched]
    assert np.abs(found.centroid - true_centres).max() < 4  # the reference image averages moving frames


def test_rois_hold_the_particle_plus_margin(phantom):
    ref, jump, _ = phantom
    found = detect_particles(ref, edge_jump=jump, margin_px=5)
    assert np.all(found.roi[:, :2] == np.maximum(found.bbox[:, :2] - 5, 0))
    assert np.all(found.roi[:, 2:] == np.minimum(found.bbox[:, 2:] + 5, 256))
    assert np.array_equal(found.area, np.bincount(found.labels.ravel())[1:])


def test_reference_image_reads_only_post_edge_frames(phantom):
    base = da.from_array(np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(2, 4, 3, 3), chunks=(1, 1, 3, 3))
    read = []

    def record(block, block_info=None):
        read.append(tuple(block_info[0]["chunk-location"][:2]))
        return block

    stack = base.map_blocks(record, dtype=np.float32)
    energies = np.array([8300.0, 8340.0, 8365.0, 8390.0])
    lazy = reference_image(stack, energies, scan=1)
    assert isinstance(lazy, da.Array) and not read
    with dask.config.set(scheduler="sync"):
        np.testing.assert_allclose(lazy.compute(), base[1, 2:].compute().mean(axis=0))
    assert sorted(read) == [(1, 2), (1, 3)]
    assert phantom[0].shape == (256, 256)


def test_ni_free_debris_is_rejected_by_its_edge_jump():
    image = _disks([(30, 30), (60, 65)], 10)
    jump = _disks([(30, 30)], 10) * 0.8  # only the first disk has a Ni edge
    found = detect_particles(image, edge_jump=jump, min_size_px=20)
    assert len(found) == 1 and np.allclose(found.centroid[0], (30, 30), atol=0.5)
    assert found.rejected == {"no Ni edge": 1}
    assert len(detect_particles(image, min_size_px=20)) == 2


def test_small_edge_and_touching_objects_are_rejected():
    image = _disks([(30, 30), (70, 70), (2, 50)], 9) + _disks([(70, 54)], 9) + _disks([(12, 75)], 2)
    found = detect_particles(image, min_size_px=40)
    assert len(found) == 1 and np.allclose(found.centroid[0], (30, 30), atol=0.5)
    assert found.rejected == {
        "touches the field edge": 1,
        "touches another object": 2,
        "debris (too small)": 1,
    }


def test_labels_keep_the_otsu_core_not_the_blurred_rim():
    yy, xx = np.indices((96, 96))
    rimmed = np.clip((14 - np.hypot(yy - 30, xx - 30)) / 6, 0, 1)  # plateau r < 8, linear rim to r = 14
    dim = np.hypot(yy - 68, xx - 66) < 7
    image = rimmed + 0.3 * dim  # the dim disk lies wholly below Otsu's threshold
    found = detect_particles(image, min_size_px=20)
    assert len(found) == 2 and np.allclose(found.centroid, [(30, 30), (68, 66)], atol=0.5)
    assert image[found.labels == 1].min() > 0.35  # the faint outer rim is not part of the particle
    assert found.area[0] < np.sum(rimmed > 0.1) - 100
    assert found.area[1] == dim.sum()  # no pixel above Otsu: the whole object is kept


def test_no_particle_is_an_error():
    with pytest.raises(NoParticlesError, match="no isolated particle"):
        detect_particles(_disks([(3, 40)], 8))
    assert issubclass(NoParticlesError, InputError)


def test_particle_larger_than_the_frame_is_an_error():
    image = np.zeros((64, 64))
    image[:, 20:40] = 1.0
    with pytest.raises(ParticleSizeError, match="cannot fit"):
        detect_particles(image)


def test_bad_shapes_are_errors():
    with pytest.raises(ShapeMismatchError, match="not \\(Y, X\\)"):
        detect_particles(np.zeros((2, 8, 8)))
    with pytest.raises(ShapeMismatchError, match="E = 3"):
        reference_image(da.zeros((1, 4, 8, 8)), np.array([8300.0, 8350.0, 8400.0]))
    with pytest.raises(InputError, match="no energy at or above"):
        reference_image(da.zeros((1, 2, 8, 8)), np.array([8300.0, 8310.0]))


@pytest.mark.skipif(not TXM.is_dir(), reason="real TXM frames absent")
def test_real_txm_frames_hold_a_particle():
    from operando.io.readers.xrm import read_xrm

    def mean(pattern):
        frames = []
        for path in sorted(TXM.glob(pattern)):
            try:
                frames.append(read_xrm(path).data)
            except InputError:  # a few reference files of the set are truncated
                continue
        return da.concatenate(frames).mean(axis=0).compute()

    sample = mean("rep01_20161456_ssrl-test-data_08354.0_eV_00*of003.xrm")
    flat = mean("rep01_*_ref_20161456_ssrl-test-data_08354.0_eV_*.xrm")
    found = detect_particles(absorbance(sample, flat)[0])
    # 7 visibly isolated Ni particles + 1 Ni-free blob (no edge jump given here).
    assert len(found) == 8
    assert found.area.min() > 1000  # secondary particles, not specks
