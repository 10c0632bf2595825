"""Weights files: safetensors tensors plus a JSON header that rebuilds the model alone.

A file is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file whose
metadata entry ``"operando"`` is a JSON object::

    {"format": "operando.weights", "format_version": 1,
     "architecture": "ResidualUNet", "arguments": {...}, "classes": [...],
     "normalization": {"low": ..., "high": ..., "percentiles": [...]} | null,
     "provenance": {...}, "operando_version": "0.1.0", "sha256": "..."}

``sha256`` covers the tensors (names, dtypes, shapes and bytes, sorted by name) and
every other header field, so any change after writing is refused
(:class:`~operando.errors.WeightsTamperedError`). The architecture is looked up by
name in :data:`ARCHITECTURES`: a file never names code to import, and nothing is
ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import operando
from operando.engine.predict import ModelRecipe, import_target, resolve_device
from operando.errors import (
    ArchitectureError,
    ConfigError,
    InputNotFoundError,
    WeightsFileError,
    WeightsTamperedError,
)
from operando.models.augmented import FlipAveraged, flip_sets
from operando.models.normalization import Normalization, Normalized

__all__ = [
    "ARCHITECTURES",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelHeader",
    "build_inference_network",
    "inference_recipe",
    "load_model",
    "read_header",
    "register_architecture",
    "resolve_architecture",
    "save_model",
]

FORMAT = "operando.weights"
FORMAT_VERSION = 1
_METADATA_KEY = "operando"

#: Architecture name (as stored in files) → ``"module:qualname"`` of its class,
#: imported on first use so that this module does not import every network.
ARCHITECTURES: dict[str, str] = {
    "ResidualUNet": "operando.models.networks:ResidualUNet",
    "DualUNet": "operando.models.dual_unet:DualUNet",
    "CycleGAN": "operando.models.cyclegan:CycleGAN",
}


def register_architecture(name: str, target: str) -> None:
    """Make ``name`` loadable from files: ``target`` is the class's ``"module:qualname"``."""
    module, sep, qualname = target.partition(":")
    if not (name and module and sep and qualname):
        raise ConfigError(
            "register_architecture", f"expected a name and 'module:qualname', got {name!r}, {target!r}"
        )
    ARCHITECTURES[name] = target


def resolve_architecture(name: str) -> type[torch.nn.Module]:
    """The class registered as ``name``; :class:`ArchitectureError` when unknown or not importable."""
    target = ARCHITECTURES.get(name)
    if target is None:
        raise ArchitectureError(f"architecture {name!r}", f"unknown; known: {sorted(ARCHITECTURES)}")
    try:
        cls = import_target(target)
    except (ImportError, AttributeError) as exc:
        raise ArchitectureError(f"architecture {name!r}", f"cannot import {target}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ArchitectureError(f"architecture {name!r}", f"{target} is not a torch.nn.Module class")
    return cls


@dataclass(frozen=True)
class ModelHeader:
    """What a weights file says about its model (everything but the tensors).

    Attributes
    ----------
    architecture : str
        Key of :data:`ARCHITECTURES`.
    arguments : dict
        JSON-able keyword arguments: ``resolve_architecture(architecture)(**arguments)``.
    classes : tuple of str
        Names of the output classes (channel ``i`` is ``classes[i]``).
    normalization : Normalization or None
        Intensity mapping applied to inputs before the network.
    provenance : dict
        Training data, label counts, epochs, metrics… (JSON-able). Inference
        reads ``provenance["training"]["axis"]`` and ``["context"]``: see
        :attr:`axis` and :attr:`context`.
    operando_version : str
        Version of operando that wrote the file.
    """

    architecture: str
    arguments: dict
    classes: tuple[str, ...]
    normalization: Normalization | None
    provenance: dict = field(default_factory=dict)
    operando_version: str = operando.__version__

    @property
    def _training(self) -> dict:
        training = (self.provenance or {}).get("training")
        return training if isinstance(training, dict) else {}

    @property
    def axis(self) -> str | None:
        """The slicing axis of a 2D model's training (``"z"``, ``"y"`` or ``"x"``), if recorded."""
        axis = self._training.get("axis")
        return axis if axis in ("z", "y", "x") else None

    @property
    def context(self) -> int:
        """Neighbouring slices per side along :attr:`axis` that the model takes as channels (0 if absent)."""
        return int(self._training.get("context") or 0)

    def fields(self) -> dict[str, Any]:
        """The header's JSON fields (without format and checksum)."""
        norm = None if self.normalization is None else self.normalization.to_dict()
        return {
            "architecture": self.architecture,
            "arguments": self.arguments,
            "classes": list(self.classes),
            "normalization": norm,
            "provenance": self.provenance,
            "operando_version": self.operando_version,
        }


# ----------------------------------------------------------------------------- checksum


def _json_default(obj: Any) -> Any:
    # Training code hands numpy scalars/arrays and paths; JSON gets their plain values.
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _to_json(where: str, value: Any) -> Any:
    """``value`` as JSON gives it back (tuples → lists, numpy → Python); ConfigError when not JSON-able."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, f"must be JSON-serializable: {exc}") from None


def _checksum(fields: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the header fields (canonical JSON) and of every tensor, sorted by name."""
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # A uint8 view hashes every dtype (bfloat16 and bool included) bit for bit.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- save


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ArchitectureError(type(model).__name__, f"state entry {name!r} is not a tensor")
        # Cloned: safetensors refuses tensors that share storage (tied or sliced weights).
        tensors[name] = value.detach().cpu().contiguous().clone()
    return tensors


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError("classes", f"expected a sequence of non-empty class names, got {classes!r}")
    names = tuple(classes)
    if not names or len(set(names)) != len(names):
        raise ConfigError("classes", f"expected at least one class and no duplicates, got {names!r}")
    return names


def save_model(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    classes: Sequence[str],
    normalization: Normalization | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its header to ``path`` (``.safetensors``), atomically.

    Parameters
    ----------
    path : path-like
        Output file; replaced when it exists. Written to a temporary file beside
        it, then renamed, so a crash never leaves a partial file under ``path``.
    model : torch.nn.Module
        An instance of a class registered in :data:`ARCHITECTURES` under its class
        name, with an ``arguments`` property (its JSON-able constructor kwargs).
    classes : sequence of str, keyword-only
        Output class names.
    normalization : Normalization, optional, keyword-only
        Input intensity mapping used in training.
    provenance : mapping, optional, keyword-only
        JSON-able training record (numpy scalars and paths are converted).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    name = type(model).__name__
    if resolve_architecture(name) is not type(model):
        raise ArchitectureError(
            name, f"{ARCHITECTURES[name]} is another class than {type(model).__qualname__}"
        )
    if not hasattr(model, "arguments"):
        raise ArchitectureError(name, "the model has no 'arguments' property to rebuild it from")
    header = ModelHeader(
        architecture=name,
        arguments=_to_json("arguments", dict(model.arguments)),
        classes=_check_classes(classes),
        normalization=normalization,
        provenance=_to_json("provenance", dict(provenance or {})),
    )
    tensors = _state_tensors(model)
    fields = header.fields()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **fields,
        "sha256": _checksum(fields, tensors),
    }
    _write_atomic(path, tensors, {_METADATA_KEY: json.dumps(meta)})
    return path


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # Linux exposes the umask without changing it; elsewhere, the common default.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


# ----------------------------------------------------------------------------- read


def _sniff(path: Path) -> str:
    """A hint on what a non-safetensors file is, for the error message."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return " (it looks like a torch.save zip checkpoint: operando never unpickles; re-save it as safetensors)"
    if head[:1] == b"\x80":
        return " (it looks like a pickle: operando never unpickles)"
    return ""


def _open_metadata(path: Path) -> tuple[dict[str, str], list[str]]:
    if not path.exists():
        raise InputNotFoundError(path, "no such weights file")
    if not path.is_file():
        raise WeightsFileError(path, "is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except SafetensorError as exc:
        raise WeightsFileError(path, f"not a complete safetensors file ({exc}){_sniff(path)}") from None


def _parse_header(path: Path, metadata: Mapping[str, str]) -> tuple[ModelHeader, dict[str, Any]]:
    """The header and what its checksum covers, from the safetensors metadata."""
    if _METADATA_KEY not in metadata:
        raise WeightsFileError(path, "a safetensors file without an operando header (foreign weights)")
    try:
        meta = json.loads(metadata[_METADATA_KEY])
    except ValueError as exc:
        raise WeightsFileError(path, f"the operando header is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsFileError(path, f"the operando header does not declare format {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsFileError(
            path,
            f"format_version {meta.get('format_version')!r} is not supported (this operando reads {FORMAT_VERSION})",
            remedy="Upgrade operando to read files written by newer versions.",
        )
    try:
        norm = meta["normalization"]
        header = ModelHeader(
            architecture=str(meta["architecture"]),
            arguments=dict(meta["arguments"]),
            classes=_check_classes(meta["classes"]),
            normalization=None if norm is None else Normalization.from_dict(norm),
            provenance=dict(meta["provenance"]),
            operando_version=str(meta["operando_version"]),
        )
        checksum = str(meta["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsFileError(path, f"malformed operando header: {type(exc).__name__}: {exc}") from None
    return header, {"fields": header.fields(), "sha256": checksum}


def read_header(path: str | os.PathLike) -> ModelHeader:
    """The header of a weights file, without reading its tensors (nor checking them).

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    WeightsFileError
        Not a complete safetensors file, no operando header, an unknown format
        version, or a malformed header.
    """
    path = Path(path)
    metadata, _ = _open_metadata(path)
    return _parse_header(path, metadata)[0]


def _read_verified(path: Path) -> tuple[ModelHeader, dict[str, torch.Tensor]]:
    """Header and tensors, after checking the checksum."""
    metadata, names = _open_metadata(path)
    header, check = _parse_header(path, metadata)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in names}
    except SafetensorError as exc:
        raise WeightsFileError(path, f"cannot read the tensors ({exc})") from None
    if _checksum(check["fields"], tensors) != check["sha256"]:
        raise WeightsTamperedError(
            path, "the SHA-256 of the header and tensors differs from the recorded one"
        )
    return header, tensors


def _build(where: object, architecture: str, arguments: Mapping[str, Any]) -> torch.nn.Module:
    cls = resolve_architecture(architecture)
    try:
        return cls(**arguments)
    except Exception as exc:  # any constructor failure means the arguments do not fit the class
        raise ArchitectureError(
            where, f"arguments {dict(arguments)!r} do not build {architecture}: {type(exc).__name__}: {exc}"
        ) from None


def _load_state(path: Path, model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsFileError(
            path, f"tensors do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise WeightsFileError(path, f"tensor shapes do not match the architecture: {'; '.join(wrong[:5])}")
    model.load_state_dict(dict(tensors), strict=True)


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> tuple[torch.nn.Module, ModelHeader]:
    """Rebuild the network of a weights file, in eval mode on ``device``.

    The normalization is not applied: see :class:`~operando.models.normalization.Normalized`
    or :func:`inference_recipe`.

    Returns
    -------
    (torch.nn.Module, ModelHeader)

    Raises
    ------
    WeightsFileError
        As :func:`read_header`, or tensors that do not fit the rebuilt architecture.
    WeightsTamperedError
        Header or tensors changed after writing.
    ArchitectureError
        Unknown architecture, or arguments that do not build it.
    DeviceUnavailableError
        ``device`` names an absent GPU.
    """
    path = Path(path)
    device = resolve_device(device)
    header, tensors = _read_verified(path)
    model = _build(path, header.architecture, header.arguments)
    _load_state(path, model, tensors)
    return model.to(device).eval(), header


def build_inference_network(
    architecture: str,
    arguments: Mapping[str, Any],
    normalization: Mapping[str, Any] | None,
    flips: Sequence[Sequence[int]] = (),
) -> torch.nn.Module:
    """``Normalized(network, normalization)`` without weights: the factory of :func:`inference_recipe`.

    With ``flips``, wrapped in :class:`~operando.models.augmented.FlipAveraged`.

    Parameters
    ----------
    architecture : str
        A name in :data:`ARCHITECTURES`.
    arguments : mapping
        The network's constructor kwargs.
    normalization : mapping or None
        :meth:`Normalization.to_dict` output.
    flips : sequence of tuple of int
        Flips to average over (:func:`~operando.models.augmented.flip_sets`); none by default.
    """
    network = _build(f"architecture {architecture!r}", architecture, arguments)
    norm = None if normalization is None else Normalization.from_dict(normalization)
    return _inference_module(network, norm, flips)


def _inference_module(
    network: torch.nn.Module, normalization: Normalization | None, flips: Sequence[Sequence[int]]
) -> torch.nn.Module:
    module = Normalized(network, normalization)
    return FlipAveraged(module, flips) if flips else module


def inference_recipe(path: str | os.PathLike, *, flips: bool = False) -> ModelRecipe:
    """A :class:`~operando.engine.predict.ModelRecipe` of the file's network behind its normalization.

    It maps raw intensities ``(B, C, *patch)`` to logits ``(B, K, *patch)``, ready
    for :func:`operando.engine.predict.predict`; with ``flips``, to the log of the
    probabilities averaged over every flip of the patch (test-time augmentation,
    :class:`~operando.models.augmented.FlipAveraged`: 4 passes in 2D, 8 in 3D).
    Raises as :func:`load_model`.
    """
    network, header = load_model(path, device="cpu")
    norm = None if header.normalization is None else header.normalization.to_dict()
    sets = flip_sets(int(header.arguments.get("spatial_dims", 2))) if flips else ()
    kwargs = {
        "architecture": header.architecture,
        "arguments": header.arguments,
        "normalization": norm,
        "flips": [list(f) for f in sets],
    }
    module = _inference_module(network, header.normalization, sets)
    return ModelRecipe.from_module(module, factory=f"{__name__}:build_inference_network", kwargs=kwargs)
