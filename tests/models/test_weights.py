"""Weights files: round trips, refusal of garbage, truncated, foreign and tampered files, inference recipe."""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import operando
from operando.engine.patches import labels_from_logits, predict_array
from operando.engine.predict import ModelRecipe, predict
from operando.errors import (
    ArchitectureError,
    ConfigError,
    DeviceUnavailableError,
    InputNotFoundError,
    WeightsFileError,
    WeightsTamperedError,
)
from operando.models.augmented import FlipAveraged, flip_sets
from operando.models.normalization import Normalization, Normalized
from operando.models.weights import (
    ARCHITECTURES,
    ModelHeader,
    inference_recipe,
    load_model,
    read_header,
    register_architecture,
    save_model,
)


class TinyNet(torch.nn.Module):
    """conv 3×3 → batch norm → ReLU → conv 1×1: parameters and buffers (float and int64)."""

    def __init__(self, *, width: int = 4, out_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or out_channels < 1:
            raise ValueError(f"width and out_channels must be positive, got {width}, {out_channels}")
        self.width, self.out_channels = width, out_channels
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, out_channels, 1),
        )

    @property
    def arguments(self) -> dict:
        return {"width": self.width, "out_channels": self.out_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
]


class TensorBag(torch.nn.Module):
    """Buffers of any dtype and shape, for round trips of arbitrary state dicts."""

    def __init__(self, *, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        for name, (dtype, shape) in spec.items():
            self.register_buffer(name, torch.zeros(shape, dtype=DTYPES[dtype]))

    @property
    def arguments(self) -> dict:
        return {"spec": self.spec}


@pytest.fixture(scope="module", autouse=True)
def _test_architectures():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ARCHITECTURES, "TinyNet", f"{__name__}:TinyNet")
        mp.setitem(ARCHITECTURES, "TensorBag", f"{__name__}:TensorBag")
        yield


def _trained_tiny(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(**kwargs)
    bn = net.body[1]
    with torch.no_grad():  # non-default running statistics, so that buffers matter
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(17)
    return net.eval()


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
        )
    )


CLASSES = ("background", "electrode", "deposited")
NORM = Normalization(100.0, 4000.0, (1.0, 99.0))


def _saved(tmp_path: Path, **kwargs) -> Path:
    return save_model(
        tmp_path / "model.safetensors", _trained_tiny(), classes=CLASSES, normalization=NORM, **kwargs
    )


# ----------------------------------------------------------------------------- round trips


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    net = _trained_tiny()
    provenance = {"epochs": np.int64(12), "dice": np.array([0.9, 0.8]), "data": tmp_path / "ct.zarr"}
    path = save_model(
        tmp_path / "m.safetensors", net, classes=CLASSES, normalization=NORM, provenance=provenance
    )
    assert path == tmp_path / "m.safetensors" and os.listdir(tmp_path) == ["m.safetensors"]

    loaded, header = load_model(path)
    assert type(loaded) is TinyNet and not loaded.training
    assert header == ModelHeader(
        architecture="TinyNet",
        arguments={"width": 4, "out_channels": 3},
        classes=CLASSES,
        normalization=NORM,
        provenance={"epochs": 12, "dice": [0.9, 0.8], "data": str(tmp_path / "ct.zarr")},
        operando_version=operando.__version__,
    )
    assert read_header(path) == header
    state, back = net.state_dict(), loaded.state_dict()
    assert list(back) == list(state) and all(_bitwise_equal(state[k], back[k]) for k in state)
    x = torch.randn(2, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


@settings(max_examples=30, deadline=None)
@given(
    spec=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
        st.tuples(st.integers(0, len(DTYPES) - 1), st.lists(st.integers(0, 4), max_size=3)),
        max_size=5,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_state_dict_round_trips_bit_for_bit(spec, seed):
    bag = TensorBag(spec={k: [d, list(s)] for k, (d, s) in spec.items()})
    rng = np.random.default_rng(seed)
    for buf in bag.buffers():  # random bytes: NaNs, infinities and subnormals included
        raw = torch.from_numpy(rng.integers(0, 256, buf.numel() * buf.element_size(), dtype=np.uint8))
        buf.view(-1).view(torch.uint8).copy_(raw if buf.dtype != torch.bool else raw % 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "bag.safetensors", bag, classes=["c"])
        loaded, header = load_model(path)
    assert header.arguments == json.loads(json.dumps(bag.arguments))
    state, back = bag.state_dict(), loaded.state_dict()
    assert set(back) == set(state) and all(_bitwise_equal(state[k], back[k]) for k in state)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=30, deadline=None)
@given(
    classes=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=6, unique=True),
    provenance=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    norm=st.none() | st.builds(Normalization, st.floats(-1e3, 1e3), st.floats(1e3 + 1, 1e6)),
)
def test_any_header_round_trips_equal(classes, provenance, norm):
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(
            Path(tmp) / "m.safetensors",
            _trained_tiny(),
            classes=classes,
            normalization=norm,
            provenance=provenance,
        )
        expected = ModelHeader("TinyNet", {"width": 4, "out_channels": 3}, tuple(classes), norm, provenance)
        assert read_header(path) == expected
        assert load_model(path)[1] == expected


def test_residual_unet_small_preset_round_trips(tmp_path):
    networks = pytest.importorskip("operando.models.networks")
    torch.manual_seed(1)
    net = networks.ResidualUNet.preset("small", spatial_dims=2, out_channels=5).eval()
    names = ("background", "electrode", "deposited", "dendrite", "pit")
    path = save_model(tmp_path / "unet.safetensors", net, classes=names, normalization=NORM)
    loaded, header = load_model(path)
    assert type(loaded) is networks.ResidualUNet and header.classes == names
    x = torch.rand(1, 1, 2 * net.divisor, net.divisor)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_save_replaces_atomically_and_a_reader_of_the_old_file_keeps_the_old_file(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _trained_tiny(seed=1), classes=CLASSES)
    old_bytes, old_inode = path.read_bytes(), path.stat().st_ino
    with open(path, "rb", buffering=0) as reader:  # a reader part way through the old file
        reader.read(100)
        save_model(path, _trained_tiny(seed=2), classes=CLASSES)
        assert reader.read() == old_bytes[100:]
    assert path.stat().st_ino != old_inode  # renamed into place, never rewritten in place
    assert torch.equal(load_model(path)[0].body[0].weight, _trained_tiny(seed=2).body[0].weight)
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind
    probe = tmp_path / "probe"
    probe.touch()
    assert path.stat().st_mode == probe.stat().st_mode  # not the temporary file's private 0600


def test_failed_save_leaves_the_existing_file_intact(tmp_path):
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="provenance: must be JSON-serializable"):
        save_model(path, _trained_tiny(seed=5), classes=CLASSES, provenance={"x": object()})
    with pytest.raises(ConfigError, match="classes"):
        save_model(path, _trained_tiny(seed=5), classes=["a", "a"])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.safetensors"]


# ----------------------------------------------------------------------------- refusals


def _write(tmp_path: Path, data: bytes, name: str = "bad.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        b"hello, I am a text file\n" * 20,
        np.random.default_rng(0).bytes(4096),
        b"\xff" * 8 + b"{}",
    ],
    ids=["empty", "short", "text", "random", "huge-length"],
)
def test_garbage_is_refused(tmp_path, data):
    path = _write(tmp_path, data)
    for read in (read_header, load_model, inference_recipe):
        with pytest.raises(WeightsFileError, match=r"bad\.safetensors: not a complete safetensors file"):
            read(path)


class _Trap:
    """Unpickling this would create ``marker``: proof that the loader never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_and_torch_checkpoints_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    pickled = _write(tmp_path, pickle.dumps(_Trap(str(marker))), "legacy.pt")
    torch.save({"state": _Trap(str(marker))}, tmp_path / "legacy.pth")
    with pytest.raises(WeightsFileError, match="pickle: operando never unpickles"):
        load_model(pickled)
    with pytest.raises(WeightsFileError, match=r"torch\.save zip checkpoint"):
        load_model(tmp_path / "legacy.pth")
    assert not marker.exists()


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nope\.safetensors: no such weights file"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsFileError, match="not a regular file"):
        read_header(tmp_path)


@settings(max_examples=40, deadline=None)
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_every_truncation_is_refused(fraction):
    with tempfile.TemporaryDirectory() as tmp:
        whole = _saved(Path(tmp)).read_bytes()
        cut = _write(Path(tmp), whole[: int(fraction * len(whole))])
        with pytest.raises(WeightsFileError, match="not a complete safetensors file"):
            load_model(cut)
        with pytest.raises(WeightsFileError):
            read_header(cut)


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(path: Path, table: dict, data: bytes) -> None:
    head = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


@settings(max_examples=40, deadline=None)
@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_tensor_bit_is_detected(position, bit):
    with tempfile.TemporaryDirectory() as tmp:
        path = _saved(Path(tmp))
        table, data = _split(path)
        data = bytearray(data)
        data[int(position * len(data))] ^= 1 << bit
        _join(path, table, bytes(data))
        read_header(path)  # the header alone is intact
        with pytest.raises(WeightsTamperedError, match="SHA-256"):
            load_model(path)
        with pytest.raises(WeightsTamperedError):
            inference_recipe(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("classes", ["background", "electrode", "dendrite"]),
        ("normalization", {"low": 0.0, "high": 4000.0, "percentiles": [1.0, 99.0]}),
        ("arguments", {"width": 4, "out_channels": 3, "extra": 1}),
        ("provenance", {"epochs": 1000}),
    ],
)
def test_an_edited_header_is_detected(tmp_path, field, value):
    path = _saved(tmp_path)
    before = read_header(path)
    table, data = _split(path)
    meta = json.loads(table["__metadata__"]["operando"])
    meta[field] = value
    table["__metadata__"]["operando"] = json.dumps(meta)
    _join(path, table, data)
    assert getattr(read_header(path), field) != getattr(before, field)  # a well-formed, edited header
    with pytest.raises(WeightsTamperedError, match=r"model\.safetensors: the SHA-256"):
        load_model(path)


def test_swapped_tensor_names_are_detected(tmp_path):
    bag = TensorBag(spec={"a": [0, [3]], "b": [0, [3]]})
    bag.a.copy_(torch.tensor([1.0, 2.0, 3.0]))
    bag.b.copy_(torch.tensor([4.0, 5.0, 6.0]))
    path = save_model(tmp_path / "m.safetensors", bag, classes=["c"])
    table, data = _split(path)
    table["a"], table["b"] = table["b"], table["a"]
    _join(path, table, data)
    with pytest.raises(WeightsTamperedError):
        load_model(path)


def _with_metadata(tmp_path: Path, metadata: dict | None) -> Path:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata=metadata)
    return path


def _meta(**changes) -> str:
    meta = {
        "format": "operando.weights",
        "format_version": 1,
        "architecture": "TinyNet",
        "arguments": {},
        "classes": ["a"],
        "normalization": None,
        "provenance": {},
        "operando_version": "0.1.0",
        "sha256": "0" * 64,
    }
    meta.update(changes)
    return json.dumps({k: v for k, v in meta.items() if v != "DROP"})


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        (None, "without an operando header"),
        ({"format": "pt"}, "without an operando header"),
        ({"operando": "{not json"}, "not valid JSON"),
        ({"operando": "[1, 2]"}, "does not declare format"),
        ({"operando": _meta(format="other")}, "does not declare format"),
        ({"operando": _meta(format_version=2)}, "format_version 2 is not supported"),
        ({"operando": _meta(classes="DROP")}, "malformed operando header: KeyError"),
        ({"operando": _meta(classes=[])}, "malformed operando header"),
        ({"operando": _meta(normalization={"low": 5, "high": 1})}, "malformed operando header.*degenerate"),
    ],
)
def test_foreign_or_malformed_headers_are_refused(tmp_path, metadata, match):
    path = _with_metadata(tmp_path, metadata)
    with pytest.raises(WeightsFileError, match=match):
        read_header(path)
    with pytest.raises(WeightsFileError, match=match):
        load_model(path)


def test_unknown_architecture_is_refused(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    monkeypatch.delitem(ARCHITECTURES, "TinyNet")
    assert read_header(path).architecture == "TinyNet"
    with pytest.raises(ArchitectureError, match="architecture 'TinyNet': unknown"):
        load_model(path)
    monkeypatch.setitem(ARCHITECTURES, "TinyNet", "operando.models.no_such_module:TinyNet")
    with pytest.raises(ArchitectureError, match="cannot import"):
        load_model(path)


def test_arguments_that_do_not_build_are_refused(tmp_path):
    net = _trained_tiny()
    net.width = -1  # the header records arguments the class refuses
    path = save_model(tmp_path / "m.safetensors", net, classes=CLASSES)
    with pytest.raises(
        ArchitectureError, match=r"do not build TinyNet: ValueError: width and out_channels must be positive"
    ):
        load_model(path)


def test_tensors_that_do_not_fit_the_architecture_are_refused(tmp_path):
    net = _trained_tiny(width=8)
    net.width = 4  # rebuilt with 4 channels, file holds 8
    path = save_model(tmp_path / "m.safetensors", net, classes=CLASSES)
    with pytest.raises(
        WeightsFileError,
        match=r"shapes do not match.*body.0.weight: file \(8, 1, 3, 3\) vs model \(4, 1, 3, 3\)",
    ):
        load_model(path)
    bag = TensorBag(spec={"a": [0, [2]]})
    bag.spec = {"b": [0, [2]]}
    path = save_model(tmp_path / "bag.safetensors", bag, classes=["c"])
    with pytest.raises(WeightsFileError, match=r"missing \['b'\], unexpected \['a'\]"):
        load_model(path)


def test_saving_an_unregistered_or_impostor_class_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ArchitectureError, match="unknown"):
        save_model(tmp_path / "m.safetensors", torch.nn.Conv2d(1, 1, 1), classes=["a"])
    monkeypatch.setitem(ARCHITECTURES, "TinyNet", f"{__name__}:TensorBag")
    with pytest.raises(ArchitectureError, match="another class"):
        save_model(tmp_path / "m.safetensors", _trained_tiny(), classes=["a"])
    with pytest.raises(ConfigError, match="module:qualname"):
        register_architecture("X", "no_colon")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_absent_gpu_is_refused(tmp_path):
    with pytest.raises(DeviceUnavailableError, match="no GPU"):
        load_model(_saved(tmp_path), device="cuda")


# ----------------------------------------------------------------------------- inference


def _predicted_from_store(tmp_path: Path, recipe: ModelRecipe, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random raw intensities (40, 36) in a zarr store, and the labels ``predict`` writes from them."""
    data = np.random.default_rng(seed).integers(0, 4500, (40, 36)).astype(np.uint16)
    src = zarr.create_array(
        store=str(tmp_path / "src.zarr"), shape=data.shape, chunks=(20, 18), dtype=data.dtype
    )
    src[...] = data
    out = zarr.create_array(
        store=str(tmp_path / "labels.zarr"), shape=data.shape, chunks=(13, 11), dtype="uint8"
    )
    predict(src, recipe, out, patch=(16, 12), overlap=0.25, device="cpu")
    return data, out[...]


def test_recipe_from_the_file_predicts_what_the_normalized_in_memory_model_predicts(tmp_path):
    net = _trained_tiny(seed=3)
    path = save_model(tmp_path / "m.safetensors", net, classes=CLASSES, normalization=NORM)
    recipe = inference_recipe(path)
    assert (
        isinstance(recipe, ModelRecipe)
        and recipe.factory == "operando.models.weights:build_inference_network"
    )
    assert isinstance(recipe.build(), Normalized) and recipe.build().normalization == NORM

    data, out = _predicted_from_store(tmp_path, recipe, seed=4)
    expected = labels_from_logits(predict_array(NORM.apply(data), net, patch=(16, 12), overlap=0.25))
    np.testing.assert_array_equal(out, expected)
    assert len(np.unique(expected)) > 1  # a non-trivial labelling
    # Without the normalization the labels differ: the recipe really applies it.
    raw = labels_from_logits(predict_array(data.astype(np.float32), net, patch=(16, 12), overlap=0.25))
    assert not np.array_equal(raw, expected)


def test_recipe_with_flips_predicts_the_flip_average_of_the_file_model(tmp_path):
    net = _trained_tiny(seed=3)
    path = save_model(tmp_path / "m.safetensors", net, classes=CLASSES, normalization=NORM)
    recipe = inference_recipe(path, flips=True)
    assert recipe.kwargs["flips"] == [[-2], [-1], [-2, -1]] and recipe.digest != inference_recipe(path).digest
    built = recipe.build()
    assert isinstance(built, FlipAveraged) and built.model.normalization == NORM

    data, out = _predicted_from_store(tmp_path, recipe, seed=6)
    averaged = FlipAveraged(Normalized(net, NORM), flip_sets(2)).eval()
    expected = labels_from_logits(predict_array(data, averaged, patch=(16, 12), overlap=0.25))
    np.testing.assert_array_equal(out, expected)
    plain = labels_from_logits(predict_array(data, Normalized(net, NORM), patch=(16, 12), overlap=0.25))
    assert not np.array_equal(plain, expected)  # the flips change some labels: the recipe really averages


def test_context_model_rebuilds_from_the_file_and_its_header_carries_context_and_axis(tmp_path):
    networks = pytest.importorskip("operando.models.networks")
    torch.manual_seed(2)
    net = networks.ResidualUNet.preset("small", spatial_dims=2, out_channels=3, in_channels=5).eval()
    prov = {"training": {"axis": "y", "context": 2}}
    path = save_model(tmp_path / "ctx.safetensors", net, classes=CLASSES, normalization=NORM, provenance=prov)
    header = read_header(path)
    assert (header.context, header.axis, header.arguments["in_channels"]) == (2, "y", 5)
    loaded, _ = load_model(path)
    x = torch.rand(2, 5, net.divisor, 2 * net.divisor)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    recipe = inference_recipe(path)
    volume = (4000 * np.random.default_rng(0).random((16, 6, 24))).astype(np.float32)
    expected = predict_array(volume, Normalized(net, NORM), patch=8, axes=(0, 2), context=2)
    np.testing.assert_array_equal(
        predict_array(volume, recipe.build(), patch=8, axes=(0, 2), context=2), expected
    )


def test_header_without_training_record_means_no_context(tmp_path):
    header = read_header(_saved(tmp_path))
    assert (header.context, header.axis) == (0, None)
