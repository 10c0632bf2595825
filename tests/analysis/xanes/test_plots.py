"""The XANES figures: valid, non-blank PNGs, and the right content."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from operando.analysis.xanes import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
P, S, F, H = 3, 2, 10, 12


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    yy, xx = np.indices((64, 64))
    labels = np.zeros((64, 64), dtype=np.int32)
    for p, (y, x) in enumerate([(16, 16), (16, 48), (48, 32)]):
        labels[np.hypot(yy - y, xx - x) < 7] = p + 1
    reference = (labels > 0) + rng.normal(0, 0.05, labels.shape)
    positions = np.cumsum(rng.normal(0, 0.5, (P, F, 2)), axis=1) + 30
    edge = 8346.0 + rng.uniform(0, 2.5, (P, S, H, H))
    masks = np.zeros((P, H, H), dtype=bool)
    masks[:, 2:-2, 2:-2] = True
    diffs = {"com": rng.normal(0, 0.01, (P, H, H)), "phase": rng.normal(0, 0.1, (P, H, H))}
    return reference, labels, positions, edge, masks, diffs


def _check_png(path, min_colours: int = 5) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) >= min_colours, f"{path.name} looks blank: {len(colours)} colours"


def test_overlay_draws_one_contour_and_id_per_particle(arrays):
    reference, labels, *_ = arrays
    fig = plots._overlay_figure(reference, labels)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == P
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2"]
    assert "3 particles" in ax.get_title()


def test_displacement_is_distance_from_the_first_frame(arrays):
    _, _, positions, *_ = arrays
    (ax,) = plots._displacement_figure(positions).axes
    lines = ax.get_lines()
    assert len(lines) == P
    expected = np.hypot(*(positions[1] - positions[1, 0]).T)
    np.testing.assert_allclose(lines[1].get_ydata(), expected)


def test_velocity_has_both_components(arrays):
    _, _, positions, *_ = arrays
    axes = plots._velocity_figure(positions).axes
    assert [ax.get_ylabel() for ax in axes] == ["v_y (px / frame)", "v_x (px / frame)"]
    np.testing.assert_allclose(axes[1].get_lines()[2].get_ydata(), np.gradient(positions[2, :, 1]))


def test_edge_maps_grid_shares_one_ev_scale(arrays):
    *_, edge, masks, _ = arrays
    fig = plots._edge_figure(edge, masks=masks)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == P * S
    assert len({im.get_clim() for im in images}) == 1
    lo, hi = images[0].get_clim()
    assert 8346.0 <= lo < hi <= 8348.5
    assert np.ma.is_masked(images[0].get_array()[0, 0])  # NaN outside the mask
    assert any(ax.get_ylabel() == "edge energy E½ (eV)" for ax in fig.axes)


def test_differentials_one_column_per_method(arrays):
    *_, diffs = arrays
    fig = plots._differential_figure(diffs)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == P * 2
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["com", "phase"]
    lo, hi = images[0].get_clim()
    assert lo == -hi


def test_every_plot_writes_a_readable_png(arrays, tmp_path):
    reference, labels, positions, edge, masks, diffs = arrays
    paths = [
        plots.plot_overlay(reference, labels, tmp_path / "overlay.png"),
        plots.plot_displacement(positions, tmp_path / "displacement.png"),
        plots.plot_velocity(positions, tmp_path / "velocity.png"),
        plots.plot_edge_maps(edge, tmp_path / "edge.png", masks=masks),
        plots.plot_differentials(diffs, tmp_path / "diff.png"),
    ]
    for path in paths:
        _check_png(path)
