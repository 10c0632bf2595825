"""Training a Residual U-Net on sparse labels (the paper's iterative workflow).

Labelled slices along one axis are split by slice into train / validation / test.
Each *round* runs ``steps_per_round`` Adam steps on class-balanced patches centred
on labelled voxels (flips, 90° rotations, intensity jitter), then scores the
validation slices with the same sliding-window pass as inference. Training stops
after ``patience`` rounds without a better validation mean IoU, or at the time
limit (the paper: 10 rounds, 1 hour); the best weights are kept and scored on the
test slices. Unlabelled voxels (label 0) never enter the loss.

With several visible GPUs and a CUDA device, :func:`train` runs one process per
GPU under ``DistributedDataParallel`` (rank 0 validates and decides when to stop).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import torch.nn.functional as F

from operando.engine.patches import predict_array
from operando.engine.predict import resolve_device
from operando.errors import ArchitectureError, ConfigError, LabelsError, TrainingDataError
from operando.models.labels import SparseLabels
from operando.models.metrics import SegmentationMetrics
from operando.models.sampling import PatchSource, Split, split_slices

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "class_boundaries",
    "masked_cross_entropy",
    "masked_dice_loss",
    "plot_curve",
    "save_result",
    "train",
]


@dataclass(frozen=True)
class TrainingConfig:
    """Options of :func:`train`.

    Attributes
    ----------
    classes : tuple of str
        Names of labels ``1..K`` (network classes ``0..K-1``).
    spatial_dims : {2, 3}
        2D slices along ``axis`` or 3D cubes.
    axis : int
        Spatial axis (0 z, 1 y, 2 x) of the labelled slices and the split.
    preset : str
        ``ResidualUNet`` preset.
    patch : int, optional
        Patch edge; a multiple of the network's divisor (default 64, 128 for ``paper``).
    dice_weight : float
        Weight of :func:`masked_dice_loss` added to the cross-entropy (0: the
        paper's plain cross-entropy). Dice weighs rare classes like common ones.
    boundary_weight : float
        Extra cross-entropy weight of voxels at a class boundary (0: none). A thin
        layer on a surface of nearly the same intensity is all boundary, and
        its few voxels weigh little in a plain mean.
    jitter : float
        Intensity augmentation (scale ``1 ± jitter``, shift ``± jitter / 2`` of the
        normalised range). Keep it below the contrast between classes: Li metal,
        deposited Li and dendrites differ by a few % of the range, and a jitter of
        0.1 erased that cue (deposited Li IoU 0.88 → 0.90 at 0.02).
    context : int
        2D only ("2.5D"): the network sees the slice and its ``context``
        neighbours per side along ``axis`` as ``2 * context + 1`` input channels
        and predicts the centre slice. Thin tilted structures (dendrites) are
        hard to delimit in one slice; the neighbours show where they go.
    processes : int, optional
        Data-parallel training processes (``DistributedDataParallel``), each
        drawing its own batches. Default: one per visible GPU on CUDA, one on
        the CPU; more than one on the CPU uses the gloo backend (several
        sockets, or checking the distributed path without GPUs).
    """

    classes: tuple[str, ...]
    spatial_dims: int = 2
    axis: int = 2
    preset: str = "small"
    patch: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.01
    bn_momentum: float = 0.01
    dice_weight: float = 1.0
    boundary_weight: float = 0.0
    steps_per_round: int = 50
    max_rounds: int = 10_000
    patience: int = 10
    time_limit_s: float = 3600.0
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    augment: bool = True
    rotate: bool = True
    jitter: float = 0.02
    device: str = "auto"
    init: Path | None = None
    context: int = 0
    processes: int | None = None


@dataclass
class TrainingResult:
    """The best network (eval mode, CPU), its normalisation, the curve and the test metrics."""

    network: torch.nn.Module
    normalization: Any
    classes: tuple[str, ...]
    history: list[dict] = field(default_factory=list)
    test: SegmentationMetrics | None = None
    split: Split | None = None
    provenance: dict = field(default_factory=dict)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, boundary_weight: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over labelled voxels only, optionally weighted towards class boundaries.

    Parameters
    ----------
    logits : Tensor of shape (B, K, *S)
    labels : Tensor of shape (B, *S)
        Training labels ``0..K``; 0 = unlabelled, ignored (no loss, no gradient).
    boundary_weight : float, keyword-only
        Extra weight of voxels next to another class (:func:`class_boundaries`):
        each counts ``1 + boundary_weight`` times in the weighted mean.

    Returns
    -------
    Tensor, scalar
        (Weighted) mean over labelled voxels (0 with a zero gradient when none is labelled).

    References
    ----------
    .. [1] Ronneberger, Fischer and Brox, "U-Net", MICCAI 2015, eq. 2 (weight map
       that makes the network learn the borders), doi:10.1007/978-3-319-24574-4_28.
    """
    target = labels.long() - 1
    labelled = target >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0  # cross_entropy's mean over nothing would be NaN
    if not boundary_weight:
        return F.cross_entropy(logits, target, ignore_index=-1)
    per_voxel = F.cross_entropy(logits, target, ignore_index=-1, reduction="none")
    weight = 1.0 + boundary_weight * class_boundaries(labels).to(per_voxel.dtype)
    weight = weight * labelled.to(per_voxel.dtype)
    return (per_voxel * weight).sum() / weight.sum()


def class_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """Labelled voxels with a labelled neighbour (3 × 3 or 3 × 3 × 3) of another class.

    Parameters
    ----------
    labels : Tensor of shape (B, Y, X) or (B, Z, Y, X)
        ``0..K``; 0 = unlabelled, neither a boundary nor a neighbour that makes one.

    Returns
    -------
    Tensor of bool, same shape
    """
    pool = {3: F.max_pool2d, 4: F.max_pool3d}[labels.ndim]
    values = labels.float().unsqueeze(1)
    highest = pool(values, 3, stride=1, padding=1)
    # Unlabelled neighbours count as above every class so that the minimum skips them.
    lifted = torch.where(values > 0, values, torch.finfo(values.dtype).max)
    lowest = -pool(-lifted, 3, stride=1, padding=1)
    return ((highest != values) | (lowest != values)).squeeze(1) & (labels > 0)


def masked_dice_loss(logits: torch.Tensor, labels: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """One minus the soft Dice score, averaged over the classes present in the batch.

    Only labelled voxels count (label 0 gives neither loss nor gradient). Unlike
    cross-entropy, each class weighs the same however few voxels it has, which is
    what thin, rare structures (dendrites) need.

    Parameters
    ----------
    logits : Tensor of shape (B, K, *S)
    labels : Tensor of shape (B, *S)
        ``0..K``; 0 = unlabelled.

    Returns
    -------
    Tensor, scalar

    References
    ----------
    .. [1] Milletari, Navab and Ahmadi, "V-Net", 3DV 2016, doi:10.1109/3DV.2016.79.
    """
    keep = (labels > 0).unsqueeze(1).to(logits.dtype)
    prob = torch.softmax(logits, dim=1) * keep
    onehot = F.one_hot((labels.long() - 1).clamp(min=0), logits.shape[1]).movedim(-1, 1) * keep
    dims = (0, *range(2, logits.ndim))
    truth = onehot.sum(dims)
    present = truth > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * (prob * onehot).sum(dims) + eps) / (prob.sum(dims) + truth + eps)
    return 1 - dice[present].mean()


def _build_network(config: TrainingConfig) -> tuple[torch.nn.Module, Any]:
    """A fresh preset network, or the one in ``config.init`` (checked) with its normalisation."""
    from operando.models.networks import ResidualUNet

    if config.init is None:
        net = ResidualUNet.preset(
            config.preset,
            spatial_dims=config.spatial_dims,
            out_channels=len(config.classes),
            in_channels=2 * config.context + 1,
        )
        return net, None
    from operando.models.weights import load_model

    net, header = load_model(config.init)
    if tuple(header.classes) != tuple(config.classes):
        raise LabelsError(
            config.init,
            f"classes {','.join(header.classes)} differ from --classes {','.join(config.classes)}",
            remedy="Continue training only with the classes (and order) of the --init model.",
        )
    if header.arguments.get("spatial_dims") != config.spatial_dims:
        raise ArchitectureError(
            config.init,
            f"the model is {header.arguments.get('spatial_dims')}D but training asks for {config.spatial_dims}D",
            remedy="Train with the --init model's dimensionality (--3d or not).",
        )
    if header.arguments.get("in_channels", 1) != 2 * config.context + 1:
        raise ArchitectureError(
            config.init,
            f"the model takes {header.arguments.get('in_channels', 1)} input channel(s) but --context "
            f"{config.context} makes {2 * config.context + 1}",
            remedy=f"Train with the --init model's context (--context {header.context}).",
        )
    return net, header.normalization


def _patch_size(config: TrainingConfig, divisor: int) -> int:
    patch = config.patch or (128 if config.preset == "paper" else 64)
    if patch < divisor or patch % divisor:
        raise ConfigError(
            "--patch",
            f"{patch} is not a positive multiple of the network's divisor {divisor}",
            remedy=f"Pass a multiple of {divisor}, e.g. {max(divisor, 64 // divisor * divisor)}.",
        )
    return patch


def evaluate(
    network: torch.nn.Module,
    source: PatchSource,
    keys: Sequence[tuple[int, int]],
    *,
    classes: Sequence[str],
    device: str = "cpu",
    batch_size: int = 8,
) -> SegmentationMetrics:
    """Score whole labelled slices with the inference sliding window (25 % overlap, mean blend)."""
    network.eval()
    total = SegmentationMetrics(tuple(classes), np.zeros((len(classes),) * 2, np.int64))
    with torch.inference_mode():
        for key in keys:
            img, lab, index = source.eval_pair(key)
            pred = _predicted_slice(network, source, img, index, device=device, batch_size=batch_size)
            total = total + SegmentationMetrics.from_arrays(pred, lab, classes=classes)
    return total


def _predicted_slice(
    network: torch.nn.Module,
    source: PatchSource,
    img: np.ndarray,
    index: int,
    *,
    device: str,
    batch_size: int,
) -> np.ndarray:
    """Classes of the labelled slice of an :meth:`PatchSource.eval_pair` image, shape (A, B)."""
    window = {"patch": source.patch, "overlap": 0.25, "batch_size": batch_size, "device": device}
    if source.dims == 3:
        return np.take(predict_array(img, network, **window).argmax(axis=0), index, axis=source.axis)
    # 2D: only the centre of the context stack (axis 0) is predicted
    centre = (slice(index, index + 1), slice(None), slice(None))
    logits = predict_array(img, network, axes=(1, 2), context=source.context, region=centre, **window)
    return logits[:, 0].argmax(axis=0)


def _fit_normalization(image: da.Array, times: Sequence[int], seed: int):
    from operando.models.normalization import fit_normalization

    return fit_normalization(da.stack([image[t] for t in times]), seed=seed)


def _prepare(image: da.Array, labels: SparseLabels, config: TrainingConfig):
    """Counts, split, network, normalisation and patch source of a run."""
    if labels.n_classes != len(config.classes):
        raise LabelsError(
            "--classes", f"{len(config.classes)} names for labels with {labels.n_classes} classes"
        )
    if config.spatial_dims not in (2, 3) or config.axis not in (0, 1, 2):
        raise ConfigError(
            "training", f"spatial_dims {config.spatial_dims} / axis {config.axis}: need 2|3 and 0|1|2"
        )
    if config.context < 0 or (config.context and config.spatial_dims != 2):
        raise ConfigError(
            "--context",
            f"{config.context} with {config.spatial_dims}D patches: context is a non-negative count of "
            "neighbouring slices, for 2D patches only",
            remedy="Pass --context 0, or a small positive value (1, 2) without --3d.",
        )
    if config.processes is not None and config.processes < 1:
        raise ConfigError("--processes", f"{config.processes}: need at least one training process")
    counts = labels.slice_counts(config.axis)
    if not counts:
        raise TrainingDataError(
            ", ".join(labels.sources) or "labels", "no voxel is labelled (all values are 0)"
        )
    split = split_slices(list(counts), fractions=config.fractions, seed=config.seed)
    network, normalization = _build_network(config)
    patch = _patch_size(config, network.divisor)
    if normalization is None:
        normalization = _fit_normalization(image, sorted({t for t, _ in split.train}), config.seed)
    source = PatchSource(
        image,
        labels,
        axis=config.axis,
        spatial_dims=config.spatial_dims,
        patch=patch,
        normalize=normalization.apply,
        context=config.context,
    )
    return counts, split, network, normalization, source


def train(
    image: da.Array,
    labels: SparseLabels,
    config: TrainingConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Train a ``ResidualUNet`` on sparse labels of ``image``.

    Parameters
    ----------
    image : dask.array.Array of shape (T, Z, Y, X)
        The image, read patch by patch (never whole).
    labels : SparseLabels
        Labels ``0..K`` of some timesteps (0 = unlabelled).
    config : TrainingConfig
    progress : callable, optional, keyword-only
        Receives one line per round (loss, validation IoU).

    Returns
    -------
    TrainingResult

    Raises
    ------
    LabelsError, TrainingDataError, ConfigError, ArchitectureError, DeviceUnavailableError
    """
    start = time.monotonic()
    device = resolve_device(config.device)
    counts, split, network, normalization, source = _prepare(image, labels, config)
    world = config.processes or (torch.cuda.device_count() if device == "cuda" else 1)
    if world > 1:
        state, history = _train_ddp(network, source, split, config, device=device, world=world)
        network.load_state_dict(state)
    else:
        history = _fit(network, source, split, config, device=device, progress=progress, start=start)
    network = network.cpu().eval()
    test = evaluate(network, source, split.test, classes=config.classes)
    elapsed = time.monotonic() - start
    totals = np.sum(list(counts.values()), axis=0)
    provenance = {
        "training": {
            "labels": list(labels.sources),
            "label_voxels": dict(zip(config.classes, (int(n) for n in totals[1:]), strict=True)),
            "axis": "zyx"[config.axis],
            "context": config.context,
            "spatial_dims": config.spatial_dims,
            "patch": source.patch,
            "split": split.to_dict(),
            "rounds": len(history),
            "steps_per_round": config.steps_per_round,
            "processes": world,
            "device": device,
            "seconds": round(elapsed, 1),
            "init": None if config.init is None else str(config.init),
            "best_validation_mean_iou": max((h["val_mean_iou"] for h in history), default=None),
        },
        "test": test.to_dict(),
    }
    return TrainingResult(network, normalization, tuple(config.classes), history, test, split, provenance)


def _fit(
    network: torch.nn.Module,
    source: PatchSource,
    split: Split,
    config: TrainingConfig,
    *,
    device: str,
    progress: Callable[[str], None] | None,
    start: float,
    rank: int = 0,
    world: int = 1,
    wrapped: torch.nn.Module | None = None,
) -> list[dict]:
    """The round loop; keeps the best validation weights in ``network``. Returns the history."""
    rng = np.random.default_rng(config.seed + 7919 * rank)
    torch.manual_seed(config.seed)
    model = (wrapped or network).to(device)
    _smooth_batch_norm(network, config.bn_momentum)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    aug = {"rotate": config.rotate, "jitter": config.jitter} if config.augment else None
    weights = np.full(len(split.train), 1 / len(split.train))
    best, best_state, stale, history = -math.inf, None, 0, []
    for rnd in range(1, config.max_rounds + 1):
        model.train()
        losses = []
        for step in range(config.steps_per_round):
            _anneal(opt, config, rnd - 1 + step / config.steps_per_round, time.monotonic() - start)
            x, y = source.batch(split.train, weights, config.batch_size, rng, aug=aug)
            logits, target = model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device)
            loss = masked_cross_entropy(logits, target, boundary_weight=config.boundary_weight)
            if config.dice_weight:
                loss = loss + config.dice_weight * masked_dice_loss(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if time.monotonic() - start > config.time_limit_s:
                break
        stop = False
        if rank == 0:
            val = evaluate(network, source, split.validation, classes=config.classes, device=device)
            score = val.mean_iou
            history.append(
                {
                    "round": rnd,
                    "loss": float(np.mean(losses)),
                    "val_mean_iou": score,
                    "val_accuracy": val.accuracy,
                    "learning_rate": opt.param_groups[0]["lr"],
                    "seconds": round(time.monotonic() - start, 1),
                }
            )
            if score > best:
                best, best_state, stale = score, copy.deepcopy(network.state_dict()), 0
            else:
                stale += 1
            if progress is not None:
                progress(
                    f"round {rnd}: loss {history[-1]['loss']:.4f}  validation mean IoU {score:.3f}"
                    f"  accuracy {val.accuracy:.3f}  ({history[-1]['seconds']:.0f} s)"
                )
            stop = stale >= config.patience or time.monotonic() - start > config.time_limit_s
        if world > 1:
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    if best_state is not None:
        network.load_state_dict(best_state)
    return history


def _smooth_batch_norm(network: torch.nn.Module, momentum: float) -> None:
    """Average batch-norm statistics over ~1/momentum steps instead of torch's 10.

    Class-balanced batches differ a lot from one another (one centred on pits, the
    next on electrode); statistics of the last ten make validation swing by tens
    of percent from round to round.
    """
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _anneal(opt: torch.optim.Optimizer, config: TrainingConfig, rounds_done: float, elapsed_s: float) -> None:
    """Cosine learning rate over the budget, down to ``final_lr_fraction`` of the start.

    The budget is whichever of ``max_rounds`` and ``time_limit_s`` runs out first.
    At a fixed step the class-balanced patches keep the validation IoU jumping from
    round to round; annealing to the deadline lets the weights settle by then, and
    adapts by itself to a slower or faster machine.
    """
    progress = min(1.0, max(rounds_done / config.max_rounds, elapsed_s / config.time_limit_s))
    low = config.final_lr_fraction
    scale = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))
    for group in opt.param_groups:
        group["lr"] = config.learning_rate * scale


def _train_ddp(
    network: torch.nn.Module,
    source: PatchSource,
    split: Split,
    config: TrainingConfig,
    *,
    device: str,
    world: int,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``world`` processes (DistributedDataParallel); returns rank 0's best state and history.

    Rank 0 writes them as safetensors and JSON (nothing is unpickled on the way back).
    """
    from safetensors.torch import load_file

    if device == "cuda" and world > torch.cuda.device_count():
        raise ConfigError(
            "--processes",
            f"{world} processes on CUDA but {torch.cuda.device_count()} GPUs are visible",
            remedy="Pass at most one process per GPU, or leave --processes out.",
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        address = ("127.0.0.1", _free_port())
        torch.multiprocessing.spawn(
            _ddp_worker, args=(world, address, device, network, source, split, config, out), nprocs=world
        )
        state = load_file(out / "best.safetensors")
        history = json.loads((out / "history.json").read_text())
    return state, history


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(
    rank: int, world: int, address: tuple[str, int], device: str, network, source, split, config, out: Path
) -> None:
    from safetensors.torch import save_file

    torch.distributed.init_process_group(
        "nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://{address[0]}:{address[1]}",
        rank=rank,
        world_size=world,
    )
    try:
        if device == "cuda":
            torch.cuda.set_device(rank)
            device = f"cuda:{rank}"
        else:  # the processes share the cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        network = network.to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[rank] if device != "cpu" else None
        )
        kwargs = {"rank": rank, "world": world, "wrapped": wrapped, "start": time.monotonic()}
        history = _fit(
            network, source, split, config, device=device, progress=print if rank == 0 else None, **kwargs
        )
        if rank == 0:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()},
                out / "best.safetensors",
            )
            (out / "history.json").write_text(json.dumps(history))
    finally:
        torch.distributed.destroy_process_group()


def plot_curve(history: Sequence[Mapping], path: str | Path) -> Path:
    """Training loss and validation mean IoU per round, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rounds = [h["round"] for h in history]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(rounds, [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax.set_xlabel("round")
    ax.set_ylabel("cross-entropy", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(rounds, [h["val_mean_iou"] for h in history], color="tab:orange", label="validation mean IoU")
    ax2.set_ylabel("validation mean IoU", color="tab:orange")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def save_result(
    result: TrainingResult, path: str | Path, *, provenance: Mapping | None = None
) -> tuple[Path, Path]:
    """Write the weights (safetensors) and the curve PNG ``<stem>.curve.png`` beside them."""
    from operando.models.weights import save_model

    path = Path(path)
    prov = {**result.provenance, **(provenance or {})}
    out = save_model(
        path, result.network, classes=result.classes, normalization=result.normalization, provenance=prov
    )
    return out, plot_curve(result.history, path.with_name(path.stem + ".curve.png"))
