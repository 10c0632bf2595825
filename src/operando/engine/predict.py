"""Seam-exact overlapping patch inference over a zarr array, out of core.

The dask layer is bookkeeping: :func:`predict` lays out the **global** patch grid
(:class:`~operando.engine.patches.PatchGrid`) of the source, derives the halo every
output chunk needs from it (:func:`~operando.engine.patches.halo_for`), and lets
:func:`~operando.engine.blockwise.map_to_zarr` run a pure kernel over owned output
chunks. The kernel calls :func:`~operando.engine.patches.predict_region` on the
chunk + halo block and writes ``labels_from_logits``, so the labels do not depend
on the chunking: they equal one whole-array sliding-window pass.

The model travels as a small :class:`ModelRecipe` (an importable factory, its
keyword arguments, and the state dict as named numpy arrays); each worker process
builds it once and keeps it in a per-process cache keyed by the hash of the
weights, so tasks reuse the built module instead of unpickling a model each.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from operando.engine.blockwise import map_to_zarr, unit_shape
from operando.engine.patches import (
    Blend,
    PatchGrid,
    halo_for,
    labels_from_logits,
    predict_region,
    probabilities,
)
from operando.engine.progress import RunReport
from operando.errors import DeviceUnavailableError, ModelOutputError, ShapeMismatchError

__all__ = ["ModelRecipe", "grid_halo", "import_target", "predict", "resolve_device", "worker_device"]

#: Voxels whose blended logits a task holds at once (80 MiB for 5 classes).
_SLAB_VOXELS = 2**21


# --------------------------------------------------------------------------- model


def _qualified(factory: Callable[..., torch.nn.Module]) -> str:
    return f"{factory.__module__}:{factory.__qualname__}"


def import_target(path: str) -> Any:
    """The object named ``"module:qualname"`` (e.g. a model factory), imported."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild a model in a worker: ``factory(**kwargs)`` then ``load_state_dict``.

    Attributes
    ----------
    factory : str
        ``"module:qualname"`` of a callable returning a ``torch.nn.Module``,
        importable in every worker process.
    kwargs : mapping
        Keyword arguments of the factory (picklable, small).
    state : tuple of (str, ndarray)
        The state dict as named numpy arrays (no torch pickles).
    digest : str
        SHA-256 of factory, kwargs and weights: the per-process cache key.
    """

    factory: str
    kwargs: Mapping[str, Any]
    state: tuple[tuple[str, np.ndarray], ...] = field(repr=False)
    digest: str

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        *,
        factory: Callable[..., torch.nn.Module] | str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> ModelRecipe:
        """Recipe of ``model``: ``factory`` (default its class) called with ``kwargs``."""
        path = factory if isinstance(factory, str) else _qualified(factory or type(model))
        kwargs = dict(kwargs or {})
        state = tuple(
            (name, t.detach().cpu().contiguous().numpy().copy()) for name, t in model.state_dict().items()
        )
        h = hashlib.sha256(f"{path}\0{sorted(kwargs.items())!r}".encode())
        for name, a in state:
            h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
        return cls(path, kwargs, state, h.hexdigest())

    def build(self) -> torch.nn.Module:
        """A fresh module in eval mode with the recipe's weights."""
        model = import_target(self.factory)(**self.kwargs)
        model.load_state_dict({name: torch.from_numpy(a.copy()) for name, a in self.state}, strict=True)
        return model.eval()


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(recipe: ModelRecipe, device: str) -> torch.nn.Module:
    """The recipe's model on ``device``, built once per process (and device)."""
    key = (recipe.digest, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = recipe.build().to(device)
    return model


def resolve_device(device: str | torch.device) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is present, else ``"cpu"``; a CUDA device must exist."""
    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(name).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device={name!r}", "CUDA was requested but no GPU is available here")
    if kind == "cuda" and torch.device(name).index is not None:
        if torch.device(name).index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device={name!r}", f"only {torch.cuda.device_count()} CUDA device(s) are available"
            )
    return name


# --------------------------------------------------------------------------- halo


def grid_halo(grid: PatchGrid, unit: Sequence[int]) -> tuple[int, ...]:
    """The smallest symmetric halo per axis covering every patch that touches any output unit."""
    halo = [0] * len(grid.shape)
    for ax in grid.axes:
        n, u = grid.shape[ax], int(unit[ax])
        for start in range(0, n, u):
            region = [slice(0, m) for m in grid.shape]
            region[ax] = slice(start, min(start + u, n))
            read = halo_for(grid, region).read[ax]
            halo[ax] = max(halo[ax], region[ax].start - read.start, read.stop - region[ax].stop)
    if grid.context:
        halo[grid.context_axis] = grid.context
    return tuple(halo)


# --------------------------------------------------------------------------- kernels


def _logits(
    block: np.ndarray,
    region_in_block: tuple[slice, ...],
    block_origin: tuple[int, ...],
    *,
    recipe: ModelRecipe,
    grid: PatchGrid,
    blend: Blend,
    batch_size: int,
    device: str,
    autocast: bool,
) -> np.ndarray:
    """Blended ``(C, …)`` logits of one output unit from its chunk + halo block."""
    region = tuple(slice(o + r.start, o + r.stop) for o, r in zip(block_origin, region_in_block, strict=True))
    dev = worker_device(device)
    model = _cached_model(recipe, dev)
    with torch.autocast(torch.device(dev).type, enabled=autocast and dev.startswith("cuda")):
        return predict_region(
            block, block_origin, region, grid, model, blend=blend, batch_size=batch_size, device=dev
        )


def _labels_kernel(block: np.ndarray, *, region_in_block, block_origin, **kw: Any) -> np.ndarray:
    """Kernel: uint8 labels of one output unit, slab by slab."""
    out = np.empty([r.stop - r.start for r in region_in_block], np.uint8)
    for part, within in _slabs(region_in_block, kw["grid"]):
        out[within] = labels_from_logits(_logits(block, part, block_origin, **kw))
    return out


def _labels_and_probabilities_kernel(
    block: np.ndarray, *, region_in_block, block_origin, **kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel: uint8 labels and float16 ``(C, …)`` probabilities of one output unit, slab by slab."""
    labels = np.empty([r.stop - r.start for r in region_in_block], np.uint8)
    probs = None
    for part, within in _slabs(region_in_block, kw["grid"]):
        logits = _logits(block, part, block_origin, **kw)
        if probs is None:
            probs = np.empty((logits.shape[0], *labels.shape), np.float16)
        labels[within] = labels_from_logits(logits)
        probs[(slice(None), *within)] = probabilities(logits)
    return labels, probs


def _slabs(
    region: tuple[slice, ...], grid: PatchGrid
) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """The region in slabs along an axis no patch spans: (slab in the block, slab in the region).

    A task holds the blended logits of what it predicts (classes × 8 bytes per
    voxel), so an output chunk is predicted at most :data:`_SLAB_VOXELS` at a time:
    a task's memory then does not grow with the chunk. Patches never cross a
    non-patch axis, so the slabs add no work.
    """
    sizes = [r.stop - r.start for r in region]
    free = [a for a in grid.other_axes if sizes[a] > 1]
    if not free or int(np.prod(sizes)) <= _SLAB_VOXELS:
        yield region, tuple(slice(0, n) for n in sizes)
        return
    axis = max(free, key=lambda a: sizes[a])
    step = max(1, _SLAB_VOXELS * sizes[axis] // int(np.prod(sizes)))
    for start in range(0, sizes[axis], step):
        stop = min(start + step, sizes[axis])
        part = list(region)
        part[axis] = slice(region[axis].start + start, region[axis].start + stop)
        within = [slice(0, n) for n in sizes]
        within[axis] = slice(start, stop)
        yield tuple(part), tuple(within)


def worker_device(device: str) -> str:
    """The torch device this process uses for ``device``.

    ``"auto"`` is a GPU when this process sees one, else the CPU. With several GPUs
    in one process's view (a LocalCluster on a multi-GPU node), worker ``i`` takes
    GPU ``i mod n``, so one worker drives one GPU.
    """
    name = resolve_device(device)
    if name != "cuda":
        return name
    n = torch.cuda.device_count()
    return f"cuda:{_worker_index() % n}" if n > 1 else "cuda:0"


def _worker_index() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return 0


# --------------------------------------------------------------------------- API


def predict(
    source: zarr.Array,
    model: torch.nn.Module | ModelRecipe,
    out_labels: zarr.Array,
    *,
    patch: int | Sequence[int],
    overlap: float = 0.25,
    blend: Blend = "mean",
    axes: Sequence[int] | None = None,
    context: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    autocast: bool = False,
    out_probabilities: zarr.Array | None = None,
    client: Any | None = None,
    quiet: bool = True,
) -> RunReport:
    """Class labels of a sliding-window model pass over ``source``, written chunk by chunk.

    Parameters
    ----------
    source : zarr.Array
        Input of shape ``S``, any real dtype (cast to float32 per patch).
    model : torch.nn.Module or ModelRecipe
        ``(B, 2 * context + 1, *patch)`` → ``(B, C, *patch)`` logits. A module is turned into a
        :class:`ModelRecipe` with its own class as factory, called without
        arguments; pass a recipe (:meth:`ModelRecipe.from_module`) for any other
        factory. Under a distributed client the factory must be importable in
        the workers; the weights are sent to each worker once.
    out_labels : zarr.Array
        uint8 output of shape ``S``; every chunk (shard) is owned by one task.
    patch, overlap, blend, axes, batch_size
        As :func:`operando.engine.patches.predict_region`.
    context : int, keyword-only
        2D patches only: neighbouring slices per side along the context axis fed
        as input channels (:class:`~operando.engine.patches.PatchGrid`); the halo
        along that axis grows by ``context``.
    device : str, keyword-only
        ``"auto"`` (a GPU where the worker has one, else the CPU), ``"cpu"``,
        ``"cuda"``… When the cluster's workers advertise the resource ``GPU``,
        each task holds one, so a worker runs one GPU task at a time.
    autocast : bool, keyword-only
        Mixed precision (torch autocast) on a GPU; ignored on the CPU.
    out_probabilities : zarr.Array, optional, keyword-only
        float16 output of shape ``(C, *S)``, chunked ``(C, *unit of out_labels)``:
        the softmax of the blended logits, written by the same tasks.
    client : distributed.Client, optional, keyword-only
        Run on its cluster; without one, a local thread pool.
    quiet : bool, keyword-only
        No progress bar.

    Returns
    -------
    RunReport

    Raises
    ------
    DeviceUnavailableError
        If a CUDA device is requested where none is available.
    ShapeMismatchError
        If the shapes differ.
    ModelOutputError
        If the model's output does not have the patch's shape or the class count
        of ``out_probabilities``.
    """
    if device != "auto" and client is None:
        resolve_device(device)
    if tuple(source.shape) != tuple(out_labels.shape):
        raise ShapeMismatchError(
            out_labels.name or "labels",
            f"source shape {source.shape} differs from output shape {out_labels.shape}",
        )
    grid = PatchGrid.build(source.shape, patch=patch, overlap=overlap, axes=axes, context=context)
    recipe = model if isinstance(model, ModelRecipe) else ModelRecipe.from_module(model)
    _probe(recipe, grid, None if out_probabilities is None else out_probabilities.shape[0])
    outs = [out_labels] if out_probabilities is None else [out_labels, out_probabilities]
    kernel = _labels_kernel if out_probabilities is None else _labels_and_probabilities_kernel
    key = f"predict:{recipe.digest[:16]}:{grid.patch}:{grid.overlap}:{grid.axes}:{grid.context}:{blend}:{len(outs)}"
    return map_to_zarr(
        kernel,
        source,
        outs,
        halo=grid_halo(grid, unit_shape(out_labels)),
        kernel_kwargs={"grid": grid, "blend": blend, "batch_size": batch_size, "device": device}
        | {"autocast": autocast},
        shared={"recipe": recipe},
        client=client,
        resources={"GPU": 1} if device != "cpu" and _workers_have_gpus(client) else None,
        run_key=key,
        quiet=quiet,
        name=(out_labels.name or "labels").lstrip("/"),
    )


def _probe(recipe: ModelRecipe, grid: PatchGrid, channels: int | None) -> None:
    """One patch through the model on the CPU here: a wrong output fails before any task runs."""
    model = _cached_model(recipe, "cpu")
    try:
        with torch.inference_mode():
            y = model(torch.zeros((1, grid.channels, *grid.patch)))
    except RuntimeError as exc:  # torch's own shape errors (e.g. a conv's input channels)
        raise ModelOutputError(
            recipe.factory,
            f"fails on one ({', '.join(map(str, (1, grid.channels, *grid.patch)))}) patch: {exc}",
            remedy=f"Context {grid.context} feeds {grid.channels} input channel(s); pass the context "
            "the model was trained with.",
        ) from None
    want = f"(1, {channels if channels is not None else 'C'}, {', '.join(map(str, grid.patch))})"
    if not isinstance(y, torch.Tensor) or y.ndim != 2 + len(grid.patch) or tuple(y.shape[2:]) != grid.patch:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelOutputError(
            recipe.factory,
            f"output {got} for one patch, expected {want}",
            remedy=f"The model must map (B, {grid.channels}, *patch) to (B, C, *patch) logits of the same "
            "spatial size (2 * context + 1 input channels).",
        )
    if channels is not None and y.shape[1] != channels:
        raise ModelOutputError(
            recipe.factory,
            f"{y.shape[1]} output channels, but the probabilities array has {channels} classes",
            remedy="Create out_probabilities with one leading entry per model output channel.",
        )


def _workers_have_gpus(client: Any | None) -> bool:
    if client is None:
        return False
    workers = client.scheduler_info().get("workers", {}).values()
    return any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers)
