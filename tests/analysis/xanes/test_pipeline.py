"""The XANES pipeline end to end: outputs, accuracy against the phantom's truth, bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from operando.analysis.xanes.pipeline import open_absorbance, run_xanes
from operando.cli import main
from operando.errors import (
    ConfigError,
    EdgeCoverageError,
    EnergyListError,
    NoParticlesError,
    ParticleSizeError,
)
from operando.io.layout import xanes_dataset
from operando.io.store import COMPLETE_ATTR, open_dataset, open_root, write_dataset
from operando.synth.xanes import default_energies, make_xanes, ni_k_edge, synth_xanes

S, E, N = 2, 21, 160
LOCAL = ["--quiet", "--jobs", "1", "--cores", "2"]
FIGURES = ["overlay.png", "displacement.png", "velocity.png", "edge_maps.png", "differential.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("xanes")
    stack = synth_xanes(root / "stack.zarr", shape=(S, E, N, N), seed=0)
    out = root / "out"
    assert main(["xanes", "run", str(stack), "-o", str(out), *LOCAL]) == 0
    truth = open_dataset(stack, group="truth").compute()
    result = open_dataset(out / "result.zarr")
    # Detected particle p is the truth object nearest its centroid.
    centroids = result.centroid_px.values
    match = [int(np.argmin(np.hypot(*(truth.reference_centre_px.values - c).T))) for c in centroids]
    return stack, out, truth, result, match


def test_every_output_is_written_with_the_exact_columns(run):
    _, out, _, result, _ = run
    tracks = pd.read_csv(out / "tracks.csv")
    edge = pd.read_csv(out / "edge.csv")
    assert list(tracks.columns) == "particle scan energy_index y x dy dx vy vx ay ax".split()
    assert list(edge.columns) == ["particle", "scan", "edge_energy_ev", "n_pixels"]
    n_p = result.sizes["particle"]
    assert len(tracks) == n_p * S * E and len(edge) == n_p * S
    assert set(tracks.energy_index) == set(range(E)) and set(edge.scan) == set(range(S))
    for name in ("aligned", "edge_energy_ev", "edge_uncertainty_ev", "mask", "position_px"):
        assert name in result
    assert result.aligned.dims == ("particle", "scan", "energy", "roi_y", "roi_x")
    assert isinstance(result.aligned.data, da.Array)
    assert (edge.n_pixels > 0).all()
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_is_marked_complete(run):
    _, out, *_ = run
    assert COMPLETE_ATTR in open_root(out / "result.zarr").attrs


def test_particles_are_found_and_none_is_debris(run):
    _, _, truth, _, match = run
    assert len(set(match)) == len(match) == int((~truth.is_debris).sum())
    assert not truth.is_debris.values[match].any()


def test_tracks_match_truth_within_a_third_of_a_pixel(run):
    _, out, truth, _, match = run
    tracks = pd.read_csv(out / "tracks.csv").sort_values(["particle", "scan", "energy_index"])
    measured = tracks[["dy", "dx"]].to_numpy().reshape(len(match), S * E, 2)
    true = truth.centre_px.values.reshape(S * E, -1, 2)[:, match].transpose(1, 0, 2)
    rms = np.sqrt(np.mean((measured - (true - true[:, :1])) ** 2))
    assert rms <= 0.3, rms


def test_edge_shifts_match_truth_within_0_3_ev(run):
    _, out, truth, _, match = run
    edge = pd.read_csv(out / "edge.csv").pivot(index="particle", columns="scan", values="edge_energy_ev")
    labels = truth.labels.values
    true = np.array([[truth.edge_energy.values[s][labels == k + 1].mean() for s in range(S)] for k in match])
    measured = edge.to_numpy()
    error = (measured - measured[:, :1]) - (true - true[:, :1])
    assert np.abs(error).max() <= 0.3, error
    assert np.ptp(true[:, -1] - true[:, 0]) > 1.0  # the phantom has inactive and reacting particles


def test_an_existing_result_is_not_overwritten(run, capsys):
    stack, out, *_ = run
    assert main(["xanes", "run", str(stack), "-o", str(out), "--method", "phase", *LOCAL]) == 2
    assert "exists already" in capsys.readouterr().err


def _write(path, data):
    write_dataset(data, path)
    return path


def test_stack_without_energy_coordinate(tmp_path):
    data, _ = make_xanes(shape=(1, 21, 48, 48), n_particles=1, n_debris=0)
    path = _write(tmp_path / "s.zarr", data.drop_vars("energy"))
    with pytest.raises(EnergyListError, match="no 'energy' coordinate"):
        run_xanes(path, tmp_path / "out")


def test_energies_not_covering_the_edge(tmp_path):
    data, _ = make_xanes(
        shape=(1, 15, 48, 48), n_particles=1, n_debris=0, energies_ev=np.linspace(8300, 8340, 15)
    )
    path = _write(tmp_path / "s.zarr", data)
    with pytest.raises(EdgeCoverageError, match="window"):
        run_xanes(path, tmp_path / "out")


def test_unknown_method(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'moments'"):
        run_xanes(tmp_path / "missing.zarr", tmp_path / "out", method="moments")


def test_no_particle_exits_with_status_2_and_a_clear_message(tmp_path, capsys):
    data, _ = make_xanes(shape=(1, 21, 64, 64), n_particles=0, n_debris=3)
    path = _write(tmp_path / "s.zarr", data)
    with pytest.raises(NoParticlesError, match="no isolated particle"):
        run_xanes(path, tmp_path / "out")
    assert main(["xanes", "run", str(path), "-o", str(tmp_path / "out2"), *LOCAL]) == 2
    assert "no isolated particle found" in capsys.readouterr().err


def test_particle_larger_than_the_frame(tmp_path):
    energies = default_energies(21)
    yy, xx = np.indices((48, 48))
    disk = np.hypot(yy - 23.5, xx - 23.5) < 20  # with its 8 px margin it cannot fit 48 px
    mu = 0.2 + 0.8 * disk[None] * ni_k_edge(energies, 8347.0)[:, None, None]
    flat = np.full((1, 21, 48, 48), 6000, dtype=np.uint16)
    counts = (6000 * np.exp(-mu))[None].astype(np.uint16)
    data = xanes_dataset({"counts": counts, "flat": flat}, energies_ev=energies, pixel_size_um=0.03)
    path = _write(tmp_path / "s.zarr", data)
    absorbance, _ = open_absorbance(path)
    assert isinstance(absorbance, da.Array)
    with pytest.raises(ParticleSizeError, match="cannot fit"):
        run_xanes(path, tmp_path / "out")
