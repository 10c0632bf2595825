"""Datasets on disk: zarr v3 stores with physical units, ingest from beamline files."""

from operando.io.chunking import choose_chunks
from operando.io.store import (
    COMPLETE_ATTR,
    missing_chunks,
    open_dataset,
    prepare_output,
    write_dataset,
)

__all__ = [
    "COMPLETE_ATTR",
    "choose_chunks",
    "missing_chunks",
    "open_dataset",
    "prepare_output",
    "write_dataset",
]
