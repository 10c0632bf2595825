"""Compressor choice for operando datasets.

The default (``codec.name`` = ``blosc-zstd``: Blosc with zstd and bit-shuffle) was
chosen by measurement on CT-like data; see ``benchmarks/bench_codecs.py`` and
``benchmarks/results/codecs.md`` for the ratios and throughputs of every candidate.
"""

from __future__ import annotations

from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec

__all__ = ["CODECS", "compressors"]

CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")


def compressors(name: str, level: int = 3) -> tuple[BytesBytesCodec, ...]:
    """The zarr v3 compressor chain for codec ``name`` at ``level``.

    Parameters
    ----------
    name : {"blosc-zstd", "blosc-lz4", "zstd", "none"}
        Candidate codec.
    level : int, keyword
        Compression level.

    Returns
    -------
    tuple of zarr codecs
        Empty for ``"none"``.
    """
    if name == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle"),)
    if name == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=level, shuffle="shuffle"),)
    if name == "zstd":
        return (ZstdCodec(level=level),)
    if name == "none":
        return ()
    from operando.errors import ConfigError

    raise ConfigError("codec.name", f"unknown codec {name!r}", remedy=f"Use one of {CODECS}.")
