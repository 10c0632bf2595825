"""The CT figures: valid, non-blank PNGs, and the right content."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from operando.analysis.ct import plots
from operando.analysis.ct.faraday import compare_with_ct, ct_volume_change, traveling_li

CLASSES = [
    "background",
    "stripping_electrode",
    "plating_electrode",
    "deposited_li",
    "redeposited_li",
    "dendrite",
    "pit",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stats() -> xr.Dataset:
    """A small statistics Dataset with the schema of ``cell_statistics``, dask-backed like the real one."""
    rng = np.random.default_rng(0)
    t, c, y, x, voxel = 4, len(CLASSES), 12, 16, 1.33
    times = np.array([0.0, 30.0, 60.0, 90.0])
    grow = np.linspace(1, 2, t)[:, None] * np.arange(1, c + 1)[None, :]
    voxels = (1000 * grow).astype(np.int64)
    thickness_map = rng.gamma(2.0, 1.0, (t, c, y, x)).astype(np.float32) * grow[:, :, None, None]
    edge = (
        rng.normal(50.0, 1.0, (t, 2, y, x))
        + np.array([-1.0, 1.0])[None, :, None, None] * times[:, None, None, None] / 30
    )
    area = y * x * voxel**2
    ds = xr.Dataset(
        {
            "voxels": (("time", "class"), voxels),
            "volume_um3": (("time", "class"), voxels * voxel**3),
            "thickness_um": (("time", "class"), voxels * voxel**3 / area),
            "side_thickness_um": (("time", "side"), np.column_stack([110 - times / 10, 108 + times / 5])),
            "thickness_map_um": (("time", "class", "y", "x"), thickness_map),
            "density_map": (("time", "class", "y", "x"), thickness_map / thickness_map.max()),
            "area_fraction": (("time", "class"), rng.uniform(0, 1, (t, c))),
            "colocalization": (("time", "pair"), rng.uniform(-1, 1, (t, 1))),
            "edge_um": (("time", "side", "y", "x"), edge),
            "edge_mean_um": (("time", "side"), edge.mean(axis=(2, 3))),
            "edge_displacement_um": (("time", "side"), edge.mean(axis=(2, 3)) - edge[0].mean(axis=(1, 2))),
            "gap_um": ("time", 200 + times / 15),
            "void_map_um": (("y", "x"), rng.uniform(0, 3, (y, x))),
        },
        coords={
            "time": times,
            "class": CLASSES,
            "side": ["stripping", "plating"],
            "y": (np.arange(y) + 0.5) * voxel,
            "x": (np.arange(x) + 0.5) * voxel,
            "pair": ["pit~dendrite"],
        },
        attrs={"voxel_size_um": voxel, "normal_axis": "z"},
    )
    return ds.chunk({"time": 1})


def _check_png(path, min_colours: int = 5) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) >= min_colours, f"{path.name} looks blank: {len(colours)} colours"


def test_volume_figure_has_one_line_per_non_background_class(stats):
    fig = plots._volumes_figure(stats, log=True)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == CLASSES[1:]
    assert ax.get_yscale() == "log"
    assert "µm³" in ax.get_ylabel() and "min" in ax.get_xlabel()
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), stats.volume_um3.sel({"class": CLASSES[1]}))


def test_maps_grid_shape_and_shared_scale(stats):
    fig = plots._maps_figure(stats, classes=["deposited_li", "pit"], times=[0.0, 90.0])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    # One colour scale per row: the row's largest thickness over its times.
    expected = stats.thickness_map_um.sel({"class": "deposited_li", "time": [0.0, 90.0]}).max().values.item()
    assert images[0].get_clim() == images[1].get_clim() == pytest.approx((0.0, expected))
    assert images[2].get_clim() != images[0].get_clim()
    # Axes span the field of view in µm.
    assert images[0].get_extent() == pytest.approx([0.0, 16 * 1.33, 12 * 1.33, 0.0])
    colourbars = [ax for ax in fig.axes if ax.get_ylabel() == "thickness (µm)"]
    assert len(colourbars) == 2


def test_edge_figure_plots_both_sides_and_the_gap(stats):
    fig = plots._edge_figure(stats, maps=True)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert [line.get_label() for line in lines] == ["stripping edge", "plating edge", "gap"]
    np.testing.assert_allclose(lines[0].get_ydata(), stats.edge_displacement_um.sel(side="stripping"))
    np.testing.assert_allclose(lines[2].get_ydata(), stats.gap_um)
    assert sum(bool(ax.images) for ax in fig.axes) == 2


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("volumes", lambda ds, p: plots.plot_volumes(ds, p)),
        ("volumes_log", lambda ds, p: plots.plot_volumes(ds, p, log=True)),
        ("sides", plots.plot_side_thickness),
        ("maps", lambda ds, p: plots.plot_maps(ds, p, classes=["dendrite", "pit"], times=[0.0, 60.0])),
        ("edges", plots.plot_edge_displacement),
    ],
)
def test_each_plot_writes_a_readable_png(stats, tmp_path, name, call):
    path = call(stats, tmp_path / f"{name}.png")
    assert path == tmp_path / f"{name}.png"
    _check_png(path)


def test_plot_all_with_faraday(stats, tmp_path):
    faraday = traveling_li(
        stats.time.values,
        area_um2=12 * 16 * 1.33**2,
        current_density_ma_cm2=1.5,
        segments_min=[(0, 10), (30, 40)],
    )
    cmp = compare_with_ct(faraday, ct_volume_change(stats))
    assert isinstance(cmp.measured_volume_um3.data, da.Array)
    paths = plots.plot_all(stats, tmp_path / "figs", faraday=cmp)
    assert [p.name for p in paths] == [
        "volumes.png",
        "side_thickness.png",
        "thickness_maps.png",
        "edge_displacement.png",
        "faraday.png",
    ]
    for path in paths:
        _check_png(path)
    (ax, ratio_ax) = plots._faraday_figure(cmp).axes
    assert len(ax.get_lines()) == 2 and len(ratio_ax.get_lines()) == 1
