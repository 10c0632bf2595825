"""operando's configuration: one namespaced config with ``OPERANDO_*`` overrides.

Built on donfig (as zarr's and dask's configs are). Values come from the defaults
below, then YAML files in ``~/.config/operando`` or ``$OPERANDO_CONFIG``, then
environment variables (``OPERANDO_CHUNKS__TARGET_MIB=64`` sets ``chunks.target_mib``).
Read them at the entry point and pass them down as arguments::

    from operando.config import config
    with config.set({"chunks.target_mib": 32}):
        ...

Keys
----
chunks.target_mib : int
    Target uncompressed chunk size in MiB (the chunking policy aims at 64-128 MiB).
chunks.energy : int
    Chunk length along the energy axis of XANES stacks.
codec.name : str
    Default compressor, one of ``operando.io.codecs.CODECS`` (chosen by
    ``benchmarks/bench_codecs.py``).
codec.level : int
    Its compression level.
"""

from __future__ import annotations

from donfig import Config

__all__ = ["config"]

DEFAULTS: dict[str, object] = {
    "chunks": {"target_mib": 96, "energy": 16},
    "codec": {"name": "blosc-zstd", "level": 3},
    # Where dask runs: see operando.engine.cluster for the meaning of each key.
    "cluster": {
        "kind": "local",
        "jobs": None,
        "cores": None,
        "memory": None,
        "processes": 1,
        "gpus_per_job": 0,
        "walltime": None,
        "queue": None,
        "account": None,
        "interface": None,
        "log_directory": None,
        "local_directory": None,
        "job_extra_directives": [],
        "memory_fraction": 0.9,
        "dashboard_address": ":8787",
        "timeout": 30,
    },
}

config = Config("operando", defaults=[DEFAULTS])
