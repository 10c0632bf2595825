"""Synthetic operando data with ground truth: CT of a Li-metal cell, TXM-XANES at the Ni K-edge.

Both phantoms are lazy dask arrays whose every chunk is computed from the seed,
the chunk's position and a few global parameters, so a phantom larger than
memory can be written chunk by chunk, and no value depends on the chunking.

- :func:`make_ct` / :func:`synth_ct`: micro-CT time series of a Li | electrolyte | Li
  cell (pits, deposited Li, dendrites, swelling, rigid misalignment).
- :func:`make_xanes` / :func:`synth_xanes`: XANES stacks of moving NCM particles
  whose Ni edge shifts with state of charge.
- :func:`synth_ct_raw` / :func:`synth_xanes_raw`: the same as raw TIFFs plus
  ``truth.zarr``, to exercise ingest.
"""

from operando.synth.ct import CT_CLASSES, make_ct, synth_ct
from operando.synth.tiff import synth_ct_raw, synth_xanes_raw, write_ct_tiffs, write_xanes_tiffs
from operando.synth.xanes import PATTERNS, make_xanes, ni_k_edge, synth_xanes

__all__ = [
    "CT_CLASSES",
    "PATTERNS",
    "make_ct",
    "make_xanes",
    "ni_k_edge",
    "synth_ct",
    "synth_ct_raw",
    "synth_xanes",
    "synth_xanes_raw",
    "write_ct_tiffs",
    "write_xanes_tiffs",
]
