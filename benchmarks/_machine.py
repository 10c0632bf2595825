"""Describe the machine a benchmark ran on, for the header of every results file::

from _machine import machine_info, machine_markdown

print(machine_markdown())
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

__all__ = ["machine_info", "machine_markdown"]

PACKAGES = ("operando", "numpy", "zarr", "numcodecs", "xarray", "dask", "scipy", "torch")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return None


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    """``"NVIDIA H100 80GB HBM3 × 1"`` as torch sees it, or None (no torch, no CUDA device)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"{n} × {names.count(n)}" for n in dict.fromkeys(names))


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, object]:
    """CPU model and count, RAM, GPU (or None), OS, Python and the versions of ``packages`` installed."""
    ram = _ram_gib()
    return {
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": None if ram is None else round(ram, 1),
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {p: v for p in packages if (v := _version(p)) is not None},
        "argv": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }


def machine_markdown(packages: tuple[str, ...] = PACKAGES) -> str:
    """One markdown line: ``Machine: CPU (n CPUs), RAM, GPU, OS, Python; packages``."""
    m = machine_info(packages)
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    ram = "? GiB" if m["ram_gib"] is None else f"{m['ram_gib']} GiB"
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    return (
        f"Machine: {m['cpu']} ({m['cpus']} CPUs), {ram} RAM, {gpu}, {m['os']}, Python {m['python']}; {pkgs}."
    )


if __name__ == "__main__":
    print(machine_markdown())
