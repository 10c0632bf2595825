"""Real data: the TauFactor NMC electrode, ingested and counted chunk-wise, against its published fractions.

``shared/data/ct/taufactor/electrode.tiff`` is a 256³ uint8 labelled volume (pore 0,
NMC 85, carbon-binder 170) with published volume fractions pore 0.4499, NMC 0.4005,
CBD 0.1496 (4 decimals). The test goes through operando's own path: TIFF reader and
ingest into zarr, a blockwise relabelling into a zarr array, and the chunk-wise
:func:`operando.engine.reduce.label_counts`; nothing holds the whole volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from operando.engine.blockwise import map_to_zarr
from operando.engine.reduce import label_counts
from operando.errors import LabelRangeError
from operando.io.ingest import ingest_ct

ELECTRODE = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ct" / "taufactor" / "electrode.tiff"
)
GREY_LEVELS = np.array([0, 85, 170], dtype=np.uint8)
PUBLISHED = {"pore": 0.4499, "nmc": 0.4005, "cbd": 0.1496}


def _electrode_path() -> Path:
    # The shared folder lies beside the checkout (/work/main → /work/shared); also accept the repo root.
    for candidate in (
        ELECTRODE,
        Path(__file__).resolve().parents[3] / "shared/data/ct/taufactor/electrode.tiff",
    ):
        if candidate.is_file():
            return candidate
    pytest.skip(f"TauFactor electrode volume not found at {ELECTRODE}")


def grey_to_class(
    block: np.ndarray, *, region_in_block: tuple[slice, ...], block_origin: tuple[int, ...]
) -> np.ndarray:
    """0/85/170 grey levels → class indices 0/1/2; any other level is refused."""
    unit = block[region_in_block]
    index = np.searchsorted(GREY_LEVELS, unit)
    bad = (index >= GREY_LEVELS.size) | (GREY_LEVELS[np.minimum(index, GREY_LEVELS.size - 1)] != unit)
    if np.any(bad):
        raise LabelRangeError(
            f"block at {block_origin}", f"grey level {unit[bad][0]} is not one of 0, 85, 170"
        )
    return index.astype(np.uint8)


def test_grey_to_class_refuses_unknown_levels():
    block = np.array([[0, 85], [170, 86]], dtype=np.uint8)
    with pytest.raises(LabelRangeError, match="grey level 86"):
        grey_to_class(block, region_in_block=(slice(None), slice(None)), block_origin=(0, 0))


def test_published_volume_fractions(tmp_path):
    store = ingest_ct([_electrode_path()], tmp_path / "electrode.zarr", voxel_size_um=1.0)
    intensity = zarr.open_group(str(store), mode="r")["intensity"]
    assert intensity.shape == (1, 256, 256, 256)
    assert intensity.dtype == np.uint8
    labels = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w").create_array(
        "labels", shape=intensity.shape, chunks=intensity.chunks, dtype=np.uint8
    )
    map_to_zarr(grey_to_class, intensity, labels, quiet=True)
    counts = label_counts(labels, 3)
    assert counts.sum() == 256**3
    fractions = dict(zip(PUBLISHED, (counts / counts.sum()).tolist(), strict=True))
    assert {k: round(v, 4) for k, v in fractions.items()} == PUBLISHED, fractions
