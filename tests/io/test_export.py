"""OME-Zarr export: NGFF schema validity, axes and µm scales per level, pyramid values, labels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabelV05

from operando.cli import main
from operando.errors import ConfigError, DatasetLayoutError, OutputExistsError
from operando.io import open_dataset
from operando.io.export import export_ome_zarr
from operando.io.store import write_dataset
from operando.synth import synth_ct, synth_xanes

CT_SHAPE = (2, 12, 18, 21)  # odd x: level 1 trims the last column
VOXEL_UM = 1.33


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return synth_ct(tmp_path_factory.mktemp("ct") / "ct.zarr", shape=CT_SHAPE, seed=1)


@pytest.fixture(scope="module")
def ct_view(ct: Path) -> Path:
    return export_ome_zarr(ct, ct.with_name("view.ome.zarr"), labels=ct, labels_group="truth", levels=2)


@pytest.fixture(scope="module")
def xanes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xanes") / "x.zarr"
    return synth_xanes(path, shape=(2, 5, 48, 48), n_particles=1, n_debris=0)


def _ngff_schemas(version: str):
    """Validators for the official NGFF JSON schemas (shipped in the ngff-zarr wheel)."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT202012

    spec = importlib.util.find_spec("ngff_zarr")
    if spec is None:
        pytest.skip("ngff-zarr (which ships the NGFF JSON schemas) is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "spec" / version / "schemas"
    docs = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.schema")}
    resources = [
        referencing.Resource.from_contents(d, default_specification=DRAFT202012) for d in docs.values()
    ]
    registry = referencing.Registry().with_resources((r.id(), r) for r in resources)
    return {k: jsonschema.Draft202012Validator(d, registry=registry) for k, d in docs.items()}


def _attrs(group: Path) -> dict:
    if (group / "zarr.json").is_file():
        return json.loads((group / "zarr.json").read_text())["attributes"]
    return json.loads((group / ".zattrs").read_text())


def _nodes(path: Path) -> dict[str, object]:
    return {str(n.zarr.path).rstrip("/").split("/")[-1]: n for n in Reader(parse_url(str(path)))()}


def _block_mean(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """numpy oracle: 2× block mean over ``axes``, odd remainders dropped."""
    trimmed = a[tuple(slice(0, n - n % 2) if i in axes else slice(None) for i, n in enumerate(a.shape))]
    shape = []
    for i, n in enumerate(trimmed.shape):
        shape += [n // 2, 2] if i in axes else [n]
    inner = tuple(i + k + 1 for k, i in enumerate(axes))
    return trimmed.astype(np.float64).reshape(shape).mean(axis=inner)


def test_ct_validates_against_ngff_05_schemas(ct_view: Path) -> None:
    schemas = _ngff_schemas("0.5")
    schemas["strict_image"].validate(_attrs(ct_view))
    schemas["strict_label"].validate(_attrs(ct_view / "labels" / "labels"))
    schemas["image"].validate(_attrs(ct_view / "labels" / "labels"))
    root = zarr.open_group(str(ct_view), mode="r")
    assert ImageV05.from_zarr(root).attributes.ome.version == "0.5"
    ImageLabelV05.from_zarr(root["labels"]["labels"])


def test_ct_axes_scales_and_pyramid(ct: Path, ct_view: Path) -> None:
    image = _nodes(ct_view)["view.ome.zarr"]
    assert [(a["name"], a["type"], a.get("unit")) for a in image.metadata["axes"]] == [
        ("t", "time", "minute"),
        ("z", "space", "micrometer"),
        ("y", "space", "micrometer"),
        ("x", "space", "micrometer"),
    ]
    src = open_dataset(ct).intensity
    dt = float(src.time[1] - src.time[0])
    for k, transforms in enumerate(image.metadata["coordinateTransformations"]):
        scale, shift = transforms[0]["scale"], transforms[1]["translation"]
        np.testing.assert_allclose(scale, [dt, *(3 * [VOXEL_UM * 2**k])])
        np.testing.assert_allclose(shift[1:], 3 * [VOXEL_UM * (2**k - 1) / 2])
    level0, level1 = (np.asarray(a) for a in image.data)
    np.testing.assert_array_equal(level0, src.values)
    assert level1.shape == (2, 6, 9, 10)
    np.testing.assert_allclose(level1, _block_mean(src.values, (1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_ct_label_image_has_class_names_and_block_mode(ct: Path, ct_view: Path) -> None:
    node = _nodes(ct_view)["labels"]
    names = {v: p["class"] for v, p in node.metadata["properties"].items()}
    assert names == {0: "background", 1: "electrode", 2: "deposited", 3: "dendrite", 4: "pit"}
    truth = open_dataset(ct, group="truth").labels.values
    level0, level1 = (np.asarray(a) for a in node.data)
    np.testing.assert_array_equal(level0, truth)
    # Mode oracle: the class that fills the most of each 2×2×2 block (ties to the lower value).
    counts = np.stack([_block_mean(truth == c, (1, 2, 3)) for c in range(5)])
    np.testing.assert_array_equal(level1, counts.argmax(axis=0))
    assert level1.dtype == np.uint8


def test_xanes_ngff_04_zarr_v2(xanes: Path, tmp_path: Path) -> None:
    out = export_ome_zarr(xanes, tmp_path / "x.ome.zarr", levels=2, ngff="0.4")
    assert (out / ".zgroup").is_file() and not (out / "zarr.json").exists()
    _ngff_schemas("0.4")["strict_image"].validate(_attrs(out))
    ImageV04.from_zarr(zarr.open_group(str(out), mode="r"))
    image = _nodes(out)["x.ome.zarr"]
    axes = image.metadata["axes"]
    assert [(a["name"], a["type"]) for a in axes] == [
        ("scan", "time"),
        ("energy", "energy"),
        ("y", "space"),
        ("x", "space"),
    ]
    src = open_dataset(xanes).counts
    # Uneven energy steps: the energy axis is an index, the energies are kept beside it.
    assert "unit" not in axes[1]
    assert _attrs(out)["operando"]["coordinates"]["energy"] == src.energy.values.tolist()
    np.testing.assert_allclose(image.metadata["coordinateTransformations"][1][0]["scale"], [1, 1, 0.06, 0.06])
    level0, level1 = (np.asarray(a) for a in image.data)
    np.testing.assert_array_equal(level0, src.values)
    np.testing.assert_array_equal(level1, np.rint(_block_mean(src.values, (2, 3))).astype(np.uint16))


def test_refuses_existing_output_and_leaves_nothing_partial(ct: Path, tmp_path: Path) -> None:
    out = export_ome_zarr(ct, tmp_path / "v.ome.zarr", levels=1)
    with pytest.raises(OutputExistsError, match="exists already"):
        export_ome_zarr(ct, out, levels=1)
    export_ome_zarr(ct, out, levels=2, overwrite=True)
    assert len(_nodes(out)["v.ome.zarr"].data) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.ome.zarr"]
    (tmp_path / "notes").mkdir()
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        export_ome_zarr(ct, tmp_path / "notes", overwrite=True)


def test_errors_for_neither_ct_nor_xanes(tmp_path: Path, ct: Path) -> None:
    other = write_dataset(xr.Dataset({"spectrum": (("energy",), np.arange(4.0))}), tmp_path / "s.zarr")
    with pytest.raises(DatasetLayoutError, match="no CT"):
        export_ome_zarr(other, tmp_path / "s.ome.zarr")
    with pytest.raises(ConfigError, match="6 levels"):
        export_ome_zarr(ct, tmp_path / "c.ome.zarr", levels=6)
    assert not any(p.name.endswith("ome.zarr") or "partial" in p.name for p in tmp_path.iterdir())


def test_cli_export(ct: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.ome.zarr"
    assert main(["export", str(ct), "-o", str(out), "--levels", "2", "--ngff", "0.4", "--quiet"]) == 0
    assert len(_nodes(out)["cli.ome.zarr"].data) == 2
    assert main(["export", str(ct), "-o", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
