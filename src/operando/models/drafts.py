"""Drafts: a trained model's labels of a whole dataset, out of core, to correct and train on.

The second paper's iterative workflow: ``operando predict`` writes drafts that a
labelling tool (napari) opens; corrected slices, as ``draft + 1`` (0 stays free
for "unlabelled"), feed the next ``operando train``.

A 2D model trained with context (``operando train --context K``) takes the slice
and its ``K`` neighbours per side along its training axis as input channels; the
header records both (:attr:`~operando.models.weights.ModelHeader.context`,
:attr:`~operando.models.weights.ModelHeader.axis`) and the drafts honour them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from operando.errors import ArchitectureError, LabelsError
from operando.models.labels import AXES

if TYPE_CHECKING:
    from operando.models.weights import ModelHeader

__all__ = ["MAX_CHUNK_VOXELS", "predict_drafts"]


#: Largest label chunk: with 3D patches a task holds chunk × classes × 8 bytes of
#: blended logits (2D patches: a slab of the chunk at a time, see engine.predict).
MAX_CHUNK_VOXELS = 8 * 1024 * 1024


def _label_chunks(shape: Sequence[int], patch_axes: Sequence[int]) -> tuple[int, ...]:
    """(1, z, y, x) chunks of at most :data:`MAX_CHUNK_VOXELS`, whole across the patch axes if they fit.

    A patch that straddles two chunks is run by both tasks. A chunk spanning the
    whole patch plane runs each patch once: measured on a (200, 400, 400) volume
    with 128² patches, 1.4x faster than 200³ chunks. So the slab axis is halved
    first, the longest patch axis only once the slab is one slice thick.
    """
    chunks = [1, *(int(n) for n in shape[1:])]
    while int(np.prod(chunks)) > MAX_CHUNK_VOXELS:
        slab = [i for i in range(1, 4) if i not in patch_axes and chunks[i] > 1]
        pool = slab or list(patch_axes)
        i = max(pool, key=lambda a: chunks[a])
        chunks[i] = (chunks[i] + 1) // 2
    return tuple(chunks)


def predict_drafts(
    image: str | Path,
    model: str | Path,
    output: str | Path,
    *,
    variable: str = "intensity",
    axis: str | None = None,
    patch: int | None = None,
    overlap: float = 0.25,
    blend: str = "mean",
    probabilities: bool = False,
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    client: object | None = None,
    quiet: bool = True,
) -> Path:
    """Predicted labels of a ``(time, z, y, x)`` dataset, as drafts to correct and train on.

    The output dataset holds ``labels`` (time, z, y, x) uint8 with the model's
    class *indices* ``0..K-1`` (CF flag attributes name them) and, with
    ``probabilities``, ``probabilities`` (class, time, z, y, x) float16. As
    training labels a draft is ``labels + 1`` (0 is kept for "unlabelled").
    Metadata goes first, :func:`operando.engine.predict.predict` fills the arrays
    chunk by chunk, and the store is marked complete last.

    Parameters
    ----------
    image : path
        Dataset with ``variable`` of dims (time, z, y, x).
    model : path
        Weights file (:func:`operando.models.weights.save_model`).
    output : path
        New zarr dataset.
    axis : {"z", "y", "x"}, optional, keyword-only
        2D models run on the slices across this axis (default: the model's
        training axis, else x); ignored for 3D models. A model with context
        must run across its training axis.
    patch : int, optional, keyword-only
        Patch edge (default: the model's training patch, else 256 in 2D and 64 in
        3D; rounded to the network's divisor).
    tta : bool, keyword-only
        Test-time augmentation: class probabilities averaged over every flip of
        each patch (:class:`~operando.models.augmented.FlipAveraged`; 4× the
        network passes in 2D, 8× in 3D).
    overlap, blend, batch_size, device, client, quiet
        As :func:`operando.engine.predict.predict`.

    Returns
    -------
    Path
    """
    import dask.array as da
    import xarray as xr

    from operando.engine.predict import predict
    from operando.io.layout import label_attrs
    from operando.io.store import mark_complete, open_dataset, prepare_output
    from operando.models.weights import inference_recipe, read_header

    header = read_header(model)
    ds = open_dataset(image)
    if variable not in ds or ds[variable].dims != ("time", "z", "y", "x"):
        raise LabelsError(f"{image}:{variable}", "no variable with dims (time, z, y, x) to predict")
    axis = axis or header.axis or "x"
    if axis not in AXES:
        raise LabelsError("--axis", f"{axis!r} is not one of z, y, x")
    _check_context(model, header, axis)
    dims = int(header.arguments.get("spatial_dims", 2))
    divisor = 2 ** (len(header.arguments.get("channels", (1,))) - 1)
    # A patch larger than the training one pads the image far more than training did,
    # and the deep levels see that padding: measured, a model trained on 32² patches
    # lost 0.26 mean IoU when run on 256² patches. Default to the training patch.
    trained = (header.provenance or {}).get("training", {}).get("patch")
    edge = patch or trained or (256 if dims == 2 else 64)
    edge = max(divisor, edge // divisor * divisor)
    axes = (1, 2, 3) if dims == 3 else tuple(1 + i for i in range(3) if AXES[i] != axis)
    shape = ds[variable].shape
    chunks = _label_chunks(shape, axes)
    out = prepare_output(output, overwrite=overwrite, inputs=(Path(image),))
    classes = list(header.classes)
    attrs = label_attrs(classes) | {
        "comment": "class index 0..K-1 of the model; as training labels (0 = unlabelled) use labels + 1"
    }
    data = {"labels": (ds[variable].dims, da.zeros(shape, dtype=np.uint8, chunks=chunks), attrs)}
    encoding = {"labels": {"chunks": chunks, "_FillValue": None}}
    coords = {d: ds[d].variable for d in ("time", "z", "y", "x")}
    if probabilities:
        data["probabilities"] = (
            ("class", *ds[variable].dims),
            da.zeros((len(classes), *shape), dtype=np.float16, chunks=(len(classes), *chunks)),
        )
        encoding["probabilities"] = {"chunks": (len(classes), *chunks)}
        coords["class"] = xr.Variable("class", np.arange(len(classes)), label_attrs(classes))
    meta = {
        "model": str(model),
        "source": f"{image}:{variable}",
        "classes": classes,
        "axis": axis,
        "context": header.context,
        "patch": edge,
        "test_time_flips": int(tta),
        "modality": ds.attrs.get("modality", "ct"),
        # the statistics need the geometry of the image the labels describe
        **{k: ds.attrs[k] for k in ("voxel_size_um", "normal_axis") if k in ds.attrs},
    }
    xr.Dataset(data, coords=coords, attrs=meta).to_zarr(
        out, mode="w-", zarr_format=3, consolidated=False, compute=False, encoding=encoding
    )
    predict(
        zarr.open_array(str(Path(image) / variable), mode="r"),
        inference_recipe(model, flips=tta),
        zarr.open_array(str(out / "labels"), mode="r+"),
        patch=edge,
        overlap=overlap,
        blend=blend,
        axes=axes,
        context=header.context,
        batch_size=batch_size,
        device=device,
        out_probabilities=zarr.open_array(str(out / "probabilities"), mode="r+") if probabilities else None,
        client=client,
        quiet=quiet,
    )
    mark_complete(out)
    return out


def _check_context(model: str | Path, header: ModelHeader, axis: str) -> None:
    """A context model's channels must match its context, and it runs across its training axis."""
    k, channels = header.context, header.arguments.get("in_channels", 1)
    if k and (channels != 2 * k + 1 or header.arguments.get("spatial_dims", 2) != 2):
        raise ArchitectureError(
            model,
            f"the header records context {k} but the network is {header.arguments.get('spatial_dims')}D "
            f"with {channels} input channel(s) (a 2D network with {2 * k + 1} expected)",
            remedy="Retrain the model: its header is inconsistent.",
        )
    if k and axis != header.axis:
        raise LabelsError(
            "--axis",
            f"{axis!r}, but the model was trained with context {k} along {header.axis!r}: its input channels "
            f"are neighbouring slices along {header.axis!r}",
            remedy=f"Predict with --axis {header.axis} (or leave --axis out).",
        )
