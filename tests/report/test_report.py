"""``operando report`` on a demo-layout folder: a real CT statistics run and a small XANES run."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import dask
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
import zarr

from operando.analysis.ct.pipeline import CellCurrent, ReferenceSlices, statistics
from operando.cli import main
from operando.errors import DatasetLayoutError, InputNotFoundError, OutputExistsError
from operando.io import open_dataset
from operando.models.networks import ResidualUNet
from operando.models.weights import save_model
from operando.report import render_report, write_report
from operando.report.runs import find_runs, zarr_metadata_files, zarr_metadata_sha256
from operando.report.xanes import track_summary
from operando.synth import synth_ct
from operando.synth.ct import CT_CLASSES
from operando.synth.labels import truth_segmentation

matplotlib.use("Agg")

FROZEN = {"times_min": [0.0, 5.0, 10.0], "charge_end_min": 10.0}
CT_FIGURES = ("volumes", "side_thickness", "thickness_maps", "edge_displacement", "faraday")
XANES_FIGURES = ("overlay", "displacement", "velocity", "edge_maps", "differential")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """OUT/ct (real statistics of a phantom's truth, a real weights file) and OUT/xanes, plus timings."""
    out = tmp_path_factory.mktemp("demo")
    ct = out / "ct"
    ct.mkdir()
    cell = synth_ct(out / "cell.zarr", shape=(3, 16, 32, 32), seed=3, n_dendrites=2, **FROZEN)
    model = save_model(
        ct / "model.safetensors",
        ResidualUNet(spatial_dims=2, out_channels=len(CT_CLASSES), channels=(4, 8)),
        classes=CT_CLASSES,
        provenance={"epochs": 1},
    )
    segmented = truth_segmentation(cell, ct / "segmented.zarr", attrs={"model": str(model)})
    _transforms_csv(ct / "registered.transforms.csv", FROZEN["times_min"])
    reference = np.zeros((16, 32, 32), np.uint8)
    reference[:, :, ::4] = open_dataset(segmented).labels[1].values[:, :, ::4] + 1
    tifffile.imwrite(out / "check_t1.tif", reference)
    with dask.config.set(scheduler="threads"):
        statistics(
            segmented,
            ct / "stats",
            plating_side="high",
            current=CellCurrent(current_density_ma_cm2=1.5, segments_min=[(0.0, 10.0)]),
            reference=ReferenceSlices((out / "check_t1.tif",)),
        )
    _xanes_run(out / "xanes")
    (out / "timings.json").write_text(json.dumps({"ct": 12.5, "xanes": 3.25}))
    return out


def _transforms_csv(path: Path, times: list[float]) -> None:
    rows = {"time": range(len(times)), "time_min": times, "angle_z_deg": [1.5, -0.5, 0.0]}
    pd.DataFrame(rows | {"metric": [-0.9, -0.95, -1.0], "converged": True}).to_csv(path, index=False)


def _xanes_run(folder: Path) -> None:
    """tracks.csv / edge.csv as `operando xanes run` writes them, and one PNG per plot."""
    folder.mkdir()
    n_p, n_s, n_e = 2, 2, 3
    frame = np.arange(n_s * n_e)
    tracks = [
        {"particle": p, "scan": f // n_e, "energy_index": f % n_e, "y": 10.0 + f * (p + 1), "x": 5.0}
        | {"dy": f * (p + 1.0), "dx": 0.0, "vy": p + 1.0, "vx": 0.0, "ay": 0.0, "ax": 0.0}
        for p in range(n_p)
        for f in frame
    ]
    tracks[-1] |= {"y": np.nan, "x": np.nan, "dy": np.nan, "dx": np.nan}  # particle 1 lost in the last frame
    pd.DataFrame(tracks).to_csv(folder / "tracks.csv", index=False)
    edge = [(p, s, 8340.0 + p + 0.5 * s, 40) for p in range(n_p) for s in range(n_s)]
    pd.DataFrame(edge, columns=["particle", "scan", "edge_energy_ev", "n_pixels"]).to_csv(
        folder / "edge.csv", index=False
    )
    for name in XANES_FIGURES:
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot(frame, frame**2)
        ax.set_title(name)
        fig.savefig(folder / f"{name}.png", dpi=50)
        plt.close(fig)


class _Page(HTMLParser):
    """Images, section ids and the text of a page, as a browser would parse them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.images += [attrs] if tag == "img" else []
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def test_runs_are_found_in_the_demo_layout_and_in_a_run_folder(demo: Path):
    assert [(r.kind, r.name) for r in find_runs(demo)] == [("ct", "ct"), ("xanes", "xanes")]
    assert [(r.kind, r.name) for r in find_runs(demo / "ct")] == [("ct", ".")]
    assert [r.kind for r in find_runs(demo / "ct" / "stats")] == ["ct"]  # a bare `ct stats` folder
    assert find_runs(demo, max_depth=0) == []


def test_page_embeds_every_figure_and_the_tables_of_both_runs(demo: Path):
    text = render_report(demo)
    page = _Page(text)
    assert len(page.images) == len(CT_FIGURES) + len(XANES_FIGURES)
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert sorted(img["alt"] for img in page.images) == sorted(f"{n}.png" for n in CT_FIGURES + XANES_FIGURES)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # no external request
    for anchor in ("ct-ct-registration", "ct-ct-faraday", "xanes-xanes-edge", "xanes-xanes-provenance"):
        assert anchor in page.ids
    body = " ".join(page.text)
    # the compact volume table holds stats.csv's numbers
    stats = pd.read_csv(demo / "ct" / "stats" / "stats.csv")
    dendrite = stats[stats["class"] == "dendrite"]["volume_um3"].iloc[-1]
    assert f"{dendrite:.6g}" in body
    # the error-adjusted volumes of the reference timestep (the truth as segmentation: the counts)
    assert "Error-adjusted volume" in body and "adjusted.csv" in body
    # edge.csv pivoted: particle 1 at scan 1
    assert "8341.5" in body
    # the coordinate range of the segmentation's time axis, from its metadata
    assert "segmented.zarr" in body and "3 × 16 × 32 × 32" in body


def test_provenance_holds_checksums_model_header_parameters_and_timings(demo: Path):
    body = " ".join(_Page(render_report(demo)).text)
    for path in (
        demo / "ct" / "stats" / "stats.csv",
        demo / "xanes" / "edge.csv",
        demo / "ct" / "model.safetensors",
    ):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in body
    assert zarr_metadata_sha256(demo / "ct" / "segmented.zarr")[0] in body
    assert "ResidualUNet" in body and '"epochs": 1' in body  # from the weights file's header
    assert "normal_axis" in body and "flag_meanings" not in body  # root attrs only, not the labels'
    assert "15.75" in body  # timings.json total
    assert "no methods.csv" in body  # the XANES comparison table is left out with a note


def test_track_summary_counts_lost_frames_and_motion():
    tracks = pd.DataFrame(
        {"particle": [0, 0, 0], "y": [1.0, 2.0, np.nan], "x": [0.0, 0.0, np.nan]}
        | {"dy": [0.0, 3.0, np.nan], "dx": [0.0, 4.0, np.nan], "vy": [0.0, 6.0, 0.0], "vx": [0.0, 8.0, 0.0]}
    )
    row = track_summary(tracks).loc[0]
    assert (row.frames, row.lost) == (3, 1)
    assert row.final_displacement_px == pytest.approx(5.0) and row.max_speed_px_per_frame == pytest.approx(
        10.0
    )


def test_missing_parts_become_notes_and_text_is_escaped(tmp_path: Path):
    run = tmp_path / "x"
    run.mkdir()
    evil = "<script>alert(1)</script>"
    pd.DataFrame(
        {"particle": [0], "scan": [0], "y": [1.0], "x": [1.0]} | {k: [0.0] for k in ("dy", "dx", "vy", "vx")}
    ).to_csv(run / "tracks.csv", index=False)
    pd.DataFrame({"method": [evil], "rmse_px": [0.25]}).to_csv(run / "methods.csv", index=False)
    text = render_report(tmp_path, title='a "quoted" & <b>title</b>')
    page = _Page(text)
    assert page.scripts == 1 and page.images == []  # only the page's own check script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;title&lt;/b&gt;" in text
    body = " ".join(page.text)
    assert "edge.csv not found" in body and "no CT run in this folder" in body
    assert "no detected particles figure" in body and "0.25" in body


def test_a_table_of_another_layout_is_shown_as_it_is(tmp_path: Path):
    (tmp_path / "stats").mkdir()
    pd.DataFrame({"time": [0, 1], "volume_um3": [7.5, 8.25]}).to_csv(
        tmp_path / "stats" / "stats.csv", index=False
    )
    body = " ".join(_Page(render_report(tmp_path)).text)
    assert "cannot be pivoted" in body and "8.25" in body
    assert "no sides.csv" not in body and "sides.csv not found" in body and "no faraday.csv" in body


def test_metadata_checksum_ignores_chunks_and_follows_attributes(tmp_path: Path):
    store = tmp_path / "d.zarr"
    xr.Dataset({"a": (("t", "y"), np.zeros((4, 4)))}).to_zarr(store, zarr_format=3, consolidated=False)
    assert {p.name for p in zarr_metadata_files(store)} == {"zarr.json"}
    before = zarr_metadata_sha256(store)
    zarr.open_array(str(store / "a"), mode="r+")[:] = 1.0  # data changes: metadata fingerprint does not
    assert zarr_metadata_sha256(store) == before
    zarr.open_group(str(store), mode="r+").attrs["note"] = "changed"
    assert zarr_metadata_sha256(store)[0] != before[0] and zarr_metadata_sha256(store)[1] == before[1]


def test_write_report_and_its_errors(demo: Path, tmp_path: Path, capsys):
    path = write_report(demo, tmp_path / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(OutputExistsError, match=r"r\.html"):
        write_report(demo, path)
    assert main(["report", str(demo), "-o", str(path), "--overwrite"]) == 0
    with pytest.raises(InputNotFoundError, match="nowhere"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no CT run"):
        write_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "tracks.csv" in capsys.readouterr().err


def _chromium_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after its load event, as headless Chromium dumps it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install -y chromium)")
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    argv += [f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def _verdict(dom: str) -> tuple[str, str]:
    """``data-check`` and ``data-images`` that the page's script wrote on ``<body>``."""
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[-500:]
    attrs = dict(re.findall(r'data-(check|images)="([^"]*)"', body.group(0)))
    return attrs.get("check", "<no verdict>"), attrs.get("images", "")


def test_page_loads_in_headless_chromium_with_every_figure_decoded(demo: Path, tmp_path: Path):
    path = write_report(demo, tmp_path / "report.html")
    check, images = _verdict(_chromium_dom(path, tmp_path / "profile"))
    assert (check, images) == ("ok", str(len(CT_FIGURES) + len(XANES_FIGURES)))


def test_the_browser_check_catches_an_image_that_does_not_decode(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(
        {"particle": [0], "y": [1.0], "x": [1.0]} | {k: [0.0] for k in ("dy", "dx", "vy", "vx")}
    ).to_csv(run / "tracks.csv", index=False)
    (run / "overlay.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image")  # the signature, then junk
    path = write_report(run, tmp_path / "report.html")
    check, images = _verdict(_chromium_dom(path, tmp_path / "profile"))
    assert images == "1" and check != "ok" and "overlay.png" in check
