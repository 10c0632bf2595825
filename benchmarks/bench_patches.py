"""Throughput of operando's sliding-window kernel against MONAI and the bare model.

On one in-memory float32 array and one small random conv net (CPU), side by side:

* ``operando``  :func:`operando.engine.patches.predict_array` (the whole-array pass
  of the kernel that ``predict`` maps over chunks);
* ``monai``     ``monai.inferers.sliding_window_inference`` with the same patch,
  overlap, blend and batch size (skipped when MONAI is absent);
* ``forward``   the model's own forward over the same patches, same batches, no
  blending: the floor any sliding-window engine pays.

Ratios: ``operando / forward`` time (engine overhead, goal ≤ 1.10) and
``monai / operando`` time (relative throughput, goal ≥ 1.0). Each timing is the
best of ``--repeat`` runs.

Run::

    /work/venv/bin/python benchmarks/bench_patches.py           # writes results/patches.md
    /work/venv/bin/python benchmarks/bench_patches.py --quick   # small, no file
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import PACKAGES, machine_markdown
from operando.engine.patches import PatchGrid, predict_array

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "patches.md"


def conv_net(ndim: int, width: int = 16, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(1, width, 3, padding=1),
        torch.nn.ReLU(),
        conv(width, width, 3, padding=1),
        torch.nn.ReLU(),
        conv(width, classes, 1),
    ).eval()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bare_forward(array: np.ndarray, model, grid: PatchGrid, batch_size: int) -> None:
    """The model over the grid's patches (no padding case), batched, nothing blended."""
    starts = np.stack(np.meshgrid(*grid.starts, indexing="ij"), -1).reshape(-1, len(grid.patch))
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = [
                array[tuple(slice(a, a + p) for a, p in zip(s, grid.patch, strict=True))]
                for s in starts[i : i + batch_size]
            ]
            model(torch.from_numpy(np.stack(batch)[:, None]))


def case(shape, patch, overlap, blend, batch_size, repeat) -> dict[str, object]:
    model = conv_net(len(shape))
    array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    grid = PatchGrid.build(shape, patch=patch, overlap=overlap)
    row: dict[str, object] = {
        "shape": "×".join(map(str, shape)),
        "patch": "×".join(map(str, patch)),
        "overlap": overlap,
        "blend": blend,
        "patches": grid.n_patches,
    }
    ours = predict_array(array, model, patch=patch, overlap=overlap, blend=blend, batch_size=batch_size)
    row["operando s"] = best(
        lambda: predict_array(array, model, patch=patch, overlap=overlap, blend=blend, batch_size=batch_size),
        repeat,
    )
    row["forward s"] = best(lambda: bare_forward(array, model, grid, batch_size), repeat)
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        row["monai s"] = row["max |Δ| vs monai"] = None
    else:
        mode = "constant" if blend == "mean" else "gaussian"
        x = torch.from_numpy(array)[None, None]

        def monai() -> np.ndarray:
            with torch.inference_mode():
                return sliding_window_inference(x, patch, batch_size, model, overlap=overlap, mode=mode)[
                    0
                ].numpy()

        row["max |Δ| vs monai"] = float(np.abs(monai() - ours).max())
        row["monai s"] = best(monai, repeat)
    row["operando/forward"] = row["operando s"] / row["forward s"]
    row["monai/operando"] = None if row["monai s"] is None else row["monai s"] / row["operando s"]
    return row


def fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v else f"{v:.3f}"
    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small arrays, 1 repeat, no results file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    cases = (
        [((256, 256), (64, 64), 0.25, 8), ((48, 48, 48), (32, 32, 32), 0.25, 2)]
        if args.quick
        else [((1024, 1024), (256, 256), 0.25, 8), ((128, 128, 128), (64, 64, 64), 0.25, 4)]
    )
    rows = [case(s, p, o, blend, b, repeat) for s, p, o, b in cases for blend in ("mean", "gaussian")]
    cols = list(rows[0])
    table = "\n".join(
        [
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
            *("| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows),
        ]
    )
    print(table)
    if args.quick:
        return
    torch_threads = torch.get_num_threads()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        "# Patch inference benchmark (`benchmarks/bench_patches.py`)\n\n"
        "Whole-array sliding-window pass of `operando.engine.patches.predict_array` vs MONAI "
        "`sliding_window_inference` (same patch, overlap, blend, batch size) and vs the model's own forward "
        "over the same patches (no blending), on one in-memory float32 array and a random 3-layer conv net "
        f"(16 channels, 3 classes), CPU, {torch_threads} torch threads; best of {repeat} runs.\n"
        "`operando/forward` is the engine overhead (goal ≤ 1.10), `monai/operando` the throughput "
        "relative to MONAI (goal ≥ 1.0).\n\n"
        f"{table}\n\n{machine_markdown((*PACKAGES, 'monai'))}\n",
        encoding="utf-8",
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
