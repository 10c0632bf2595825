"""Training and inference throughput of operando's networks, against the machine's matmul rate.

For each network (``ResidualUNet`` presets ``small`` and ``paper``, 2D and 3D, the
``DualUNet`` and the ``CycleGAN``) and each device (CPU; CUDA when
``torch.cuda.is_available()``):

* **training**: patches/s of one full step (forward, backward, Adam step;
  cross-entropy on random labels for the U-Net, :func:`dual_unet_step`,
  :meth:`CycleGANTrainer.train_step`);
* **inference**: pixels (voxels)/s of the forward pass in eval mode, no grad.

Each is set beside the FLOPs of the step, counted by
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions, transposed
convolutions and matrix products, forward and backward; element-wise layers are
not counted), so that achieved GFLOP/s can be compared with the measured rate of
a large float32 ``torch.matmul`` on the same device: the ceiling a network's
convolutions can approach.

Run from the repository root::

    /work/venv/bin/python benchmarks/bench_models.py            # writes results/models.md
    /work/venv/bin/python benchmarks/bench_models.py --quick    # tiny sizes, prints only
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from operando.models.cyclegan import CycleGAN, CycleGANTrainer
from operando.models.dual_unet import DualUNet, dual_unet_step
from operando.models.networks import ResidualUNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_markdown

RESULT = Path(__file__).resolve().parent / "results" / "models.md"
CLASSES = 5


@dataclass(frozen=True)
class Case:
    """One network at one input size: ``batch`` patches of ``size`` per axis in ``dims`` D."""

    name: str
    dims: int
    size: int
    batch: int
    build: Callable[[], torch.nn.Module]


def cases(quick: bool, device: str) -> list[Case]:
    """The networks and sizes to time; 3D ``paper`` only on CUDA (minutes per step on a CPU)."""
    gpu = device == "cuda"

    def unet(preset: str, dims: int) -> Callable[[], torch.nn.Module]:
        return lambda: ResidualUNet.preset(preset, spatial_dims=dims, out_channels=CLASSES)

    if quick:
        return [
            Case("ResidualUNet small", 2, 32, 2, unet("small", 2)),
            Case("ResidualUNet paper", 2, 64, 2, unet("paper", 2)),
            Case("ResidualUNet small", 3, 16, 2, unet("small", 3)),
            Case("DualUNet", 2, 32, 2, DualUNet),
            Case("CycleGAN", 2, 32, 2, CycleGAN),
        ]
    out = [
        Case("ResidualUNet small", 2, 128, 32 if gpu else 8, unet("small", 2)),
        Case("ResidualUNet paper", 2, 512, 8 if gpu else 2, unet("paper", 2)),
        Case("ResidualUNet small", 3, 64, 8 if gpu else 2, unet("small", 3)),
        Case("DualUNet", 2, 64, 64 if gpu else 16, DualUNet),
        Case("CycleGAN", 2, 256, 4 if gpu else 1, CycleGAN),
    ]
    if gpu:
        out.insert(3, Case("ResidualUNet paper", 3, 128, 2, unet("paper", 3)))
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, *, repeats: int, warmups: int = 3) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after ``warmups`` runs."""
    # oneDNN / cuDNN pick and build their kernels over the first calls: 50x slower.
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_gflops(device: str, *, n: int, repeats: int) -> float:
    """Measured float32 ``n × n`` matmul rate, GFLOP/s (2 n³ FLOPs per product)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / _timed(lambda: a @ b, device, repeats=repeats) / 1e9


def _flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _steps(case: Case, device: str) -> tuple[torch.nn.Module, Callable[[], object], Callable[[], object]]:
    """The model, one training step and one inference pass, on random data of the case's shape."""
    torch.manual_seed(0)
    model = case.build().to(device)
    shape = (case.batch, 1, *(case.size,) * case.dims)
    x = torch.rand(shape, device=device)
    if isinstance(model, CycleGAN):
        trainer = CycleGANTrainer(model)
        b = (torch.rand(shape, device=device) > 0.5).float()
        train = lambda: trainer.train_step(x, b)  # noqa: E731
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        if isinstance(model, DualUNet):
            train = lambda: dual_unet_step(model.train(), opt, x, x, (x > 0.5).float())  # noqa: E731
        else:
            y = torch.randint(0, CLASSES, (case.batch, *shape[2:]), device=device)

            def train() -> None:
                model.train()
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

    def infer() -> None:
        with torch.no_grad():
            model.eval()(x)

    return model, train, infer


def measure(case: Case, device: str, *, repeats: int) -> dict[str, float]:
    """Throughput and achieved GFLOP/s of training and inference for one case."""
    model, train, infer = _steps(case, device)
    pixels = case.batch * case.size**case.dims
    t_train, t_infer = _timed(train, device, repeats=repeats), _timed(infer, device, repeats=repeats)
    f_train, f_infer = _flops(train), _flops(infer)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_patches_s": case.batch / t_train,
        "train_gflops": f_train / t_train / 1e9,
        "infer_mpix_s": pixels / t_infer / 1e6,
        "infer_gflops": f_infer / t_infer / 1e9,
        "gflop_per_patch": f_infer / case.batch / 1e9,
    }


def table(device: str, *, quick: bool) -> str:
    """Markdown section for one device."""
    peak = matmul_gflops(device, n=512 if quick else 4096, repeats=3 if quick else 10)
    threads = f", {torch.get_num_threads()} torch threads" if device == "cpu" else ""
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [
        f"## {device}: {name}{threads}",
        "",
        f"float32 matmul rate ({512 if quick else 4096}² × {512 if quick else 4096}²): **{peak:.1f} GFLOP/s**.",
        "",
        "| network | dims | patch | batch | parameters | GFLOP / patch (forward) | train patches/s "
        "| train GFLOP/s (% matmul) | inference Mpixel/s | inference GFLOP/s (% matmul) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases(quick, device):
        r = measure(case, device, repeats=2 if quick else 5)
        patch = "×".join([str(case.size)] * case.dims)
        lines.append(
            f"| {case.name} | {case.dims}D | {patch} | {case.batch} | {r['params']:,} | {r['gflop_per_patch']:.3g} "
            f"| {r['train_patches_s']:.3g} | {r['train_gflops']:.1f} ({100 * r['train_gflops'] / peak:.0f} %) "
            f"| {r['infer_mpix_s']:.3g} | {r['infer_gflops']:.1f} ({100 * r['infer_gflops'] / peak:.0f} %) |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, print only, write nothing")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    sections = [table(d, quick=args.quick) for d in devices]
    text = "\n\n".join(
        [
            "# models: training and inference throughput of the networks",
            machine_markdown(),
            "Training: one step = forward + backward + Adam; inference: eval-mode forward without grad. "
            "FLOPs counted by torch's FlopCounterMode (convolutions and matrix products only), "
            "forward + backward for training. Median of 5 runs after 3 warm-up runs.",
            *sections,
        ]
    )
    print(text)
    if not args.quick:
        RESULT.write_text(text + "\n", encoding="utf-8")
        print(f"\nwrote {RESULT}")


if __name__ == "__main__":
    main()
