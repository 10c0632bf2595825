"""The benchmark suite: every registered benchmark in its own process, one JSON and one table.

``python -m benchmarks [--suite quick|full] -o DIR`` (or ``operando bench``) runs
each script of :data:`BENCHMARKS` as a subprocess, with the quick or the full
arguments of its row, one after the other (the machine is never shared between
two benchmarks). Per benchmark it records the status, the wall time, the peak RSS
of the largest process of its tree (``wait4``: the script or one of its dask
workers), the ratio lines the script prints in bold (``**a / b = r**``) and its
output (``DIR/runs/<name>.log``). It writes ``DIR/suite.json`` and
``DIR/suite.md``: the machine (CPU, cores, RAM, GPU), one table, links to each
log and, for the full suite, to the results files the scripts wrote in
``benchmarks/results/``. A failing benchmark is recorded and the suite goes on;
the exit status is 1 if any failed.

The quick suite is a smoke run (minutes in all, nothing under ``results/`` is
written); the full suite produces the committed results (hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_markdown

__all__ = ["BENCHMARKS", "Benchmark", "Outcome", "main", "parse_ratios", "run_suite"]

HERE = Path(__file__).resolve().parent
SUITES = ("quick", "full")


@dataclass(frozen=True)
class Benchmark:
    """One row of the suite: a script, its arguments per suite and the results files it writes.

    Attributes
    ----------
    name : str
        Key in ``suite.json`` and name of its log, ``runs/<name>.log``.
    script : str
        File name in the benchmarks directory.
    full, quick : tuple of str
        Command-line arguments of the full and the quick suite.
    results : tuple of str
        Files under ``results/`` that the full run writes (linked from the table).
    timeout_s : tuple of (float, float)
        Time limit of the (quick, full) run; the process group is killed after it.
    """

    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)
    results: tuple[str, ...] = ()
    timeout_s: tuple[float, float] = (600.0, 3 * 3600.0)

    def args(self, suite: str) -> tuple[str, ...]:
        return self.quick if suite == "quick" else self.full


@dataclass
class Outcome:
    """What one benchmark run gave (one entry of ``suite.json``)."""

    name: str
    command: list[str]
    status: str  # "ok", "failed" or "timeout"
    returncode: int
    wall_s: float
    peak_rss_mib: float
    ratios: list[dict[str, object]] = field(default_factory=list)
    log: str = ""
    results: list[str] = field(default_factory=list)
    error: str = ""


NO_WRITE = ("--no-write",)
#: The suite. Quick arguments: the smallest sizes that still run every code path.
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("codecs", "bench_codecs.py", results=("codecs.md",)),
    Benchmark("ingest", "bench_ingest.py", results=("ingest.md",)),
    Benchmark("patches", "bench_patches.py", results=("patches.md",)),
    Benchmark("predict", "bench_predict.py", results=("predict.md", "predict_memory.md")),
    Benchmark(
        "models", "bench_models.py", ("--device", "all"), ("--quick", "--device", "all"), ("models.md",)
    ),
    Benchmark(
        "register",
        "bench_register.py",
        quick=("--shape", "2", "48", "64", "64", "--box", "32", "--target-mib", "1", *NO_WRITE),
        results=("register.md",),
    ),
    Benchmark(
        "stats",
        "bench_stats.py",
        ("--size", "1024", "--repeat", "3"),  # 4.3e9 voxels: the scale the goal is stated at (stats.md)
        quick=("--times", "2", "--size", "64", "--target-mib", "0.5", "--repeat", "1", *NO_WRITE),
        results=("stats.md",),
    ),
    Benchmark(
        "ct_accuracy",
        "bench_ct.py",
        ("--section", "accuracy"),
        ("--section", "accuracy", "--size", "48", "--z", "48", "--time-limit", "20", *NO_WRITE),
        ("ct_accuracy.md",),
    ),
    Benchmark(
        "ct_memory",
        "bench_ct.py",
        ("--section", "memory", "--size", "800", "--worker-memory", "1GiB"),
        ("--section", "memory", "--size", "128", "--t", "2", "--box", "32", *NO_WRITE),
        ("ct_memory.md",),
    ),
    Benchmark("xanes_methods", "bench_xanes_methods.py", results=("xanes_methods.md",)),
    Benchmark(
        "xanes",
        "bench_xanes.py",
        quick=("--parts", "accuracy,methods,speed", "--scans", "2", "--size", "128", *NO_WRITE),
        results=("xanes.md",),
    ),
    Benchmark("edge_maps", "bench_edge_maps.py", ("--scans", "54"), results=("edge_maps.md",)),
    Benchmark("scale", "bench_scale.py", results=("scale.md", "scale.json"), timeout_s=(600.0, 8 * 3600.0)),
)

# A bold span holding "a / b = r" or "a / b: r", or "a / b: **r**" with only the value bold.
_BOLD_RATIO = re.compile(r"\*\*(?P<name>[^*=:]+ / [^*=:]+?)\s*[=:]\s*(?P<value>[^*]+?)\*\*")
_VALUE_BOLD = re.compile(r"(?P<name>[\w .,()-]+ / [\w .,()-]+?):\s*\*\*(?P<value>[^*]+?)\*\*")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_ratios(text: str) -> list[dict[str, object]]:
    """The ratio lines of a benchmark's output, in order.

    Returns
    -------
    list of dict
        ``{"name": "stats / raw", "value": "0.48", "number": 0.48}``; ``number``
        is the first number of ``value`` (None if it has none).
    """
    found = []
    for line in text.splitlines():
        for pattern in (_BOLD_RATIO, _VALUE_BOLD):
            for m in pattern.finditer(line):
                name, value = m["name"].strip(" ,.("), m["value"].strip()
                first = _NUMBER.search(value)
                number = float(first[0].replace(",", "")) if first else None
                found.append({"name": name, "value": value, "number": number})
    return found


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float, bool]:
    """Reap ``proc`` with ``wait4``: (return code, peak RSS in MiB of its largest process, timed out)."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if not timed_out and time.monotonic() > deadline:
            # the whole session: dask workers and spawned children die with the script
            os.killpg(proc.pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, timed_out


def _tail(log: Path, n: int = 5) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def run_one(bench: Benchmark, *, suite: str, bench_dir: Path, out_dir: Path) -> Outcome:
    """Run one benchmark as a subprocess from the repository root; its output goes to its log."""
    command = [sys.executable, str(bench_dir / bench.script), *bench.args(suite)]
    log = out_dir / "runs" / f"{bench.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=bench_dir.parent,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        code, peak, timed_out = _wait(proc, bench.timeout_s[suite == "full"])
    wall = time.perf_counter() - start
    status = "timeout" if timed_out else ("ok" if code == 0 else "failed")
    written = [bench_dir / "results" / r for r in bench.results] if suite == "full" else []
    return Outcome(
        name=bench.name,
        command=[Path(command[0]).name, *command[1:]],
        status=status,
        returncode=code,
        wall_s=round(wall, 2),
        peak_rss_mib=round(peak, 1),
        ratios=parse_ratios(log.read_text(errors="replace")),
        log=os.path.relpath(log, out_dir),
        results=[os.path.relpath(p, out_dir) for p in written if p.exists()],
        error="" if status == "ok" else _tail(log),
    )


def run_suite(
    out_dir: str | Path,
    *,
    suite: str = "quick",
    benchmarks: tuple[Benchmark, ...] = BENCHMARKS,
    bench_dir: str | Path = HERE,
    only: tuple[str, ...] = (),
) -> list[Outcome]:
    """Run ``benchmarks`` (those named in ``only``, if given) one by one; write suite.json and suite.md.

    Returns
    -------
    list of Outcome
        In the order of ``benchmarks``.
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    unknown = set(only) - {b.name for b in benchmarks}
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}; known: {[b.name for b in benchmarks]}")
    out_dir, bench_dir = Path(out_dir), Path(bench_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    outcomes = []
    for bench in benchmarks:
        if only and bench.name not in only:
            continue
        print(f"[bench] {bench.name} ({suite}) ...", flush=True)
        outcomes.append(run_one(bench, suite=suite, bench_dir=bench_dir, out_dir=out_dir))
        o = outcomes[-1]
        print(
            f"[bench] {o.name}: {o.status} in {o.wall_s:.1f} s, peak RSS {o.peak_rss_mib:.0f} MiB", flush=True
        )
    _write(out_dir, suite=suite, started=started, outcomes=outcomes)
    return outcomes


def _write(out_dir: Path, *, suite: str, started: str, outcomes: list[Outcome]) -> None:
    doc = {
        "suite": suite,
        "started": started,
        "machine": machine_info(),
        "benchmarks": [asdict(o) for o in outcomes],
    }
    (out_dir / "suite.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out_dir / "suite.md").write_text(markdown(doc), encoding="utf-8")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(o: dict) -> str:
    ratios = "; ".join(f"{r['name']}: {r['value']}" for r in o["ratios"]) or "—"
    links = [f"[log]({o['log']})", *(f"[{Path(r).name}]({r})" for r in o["results"])]
    status = o["status"] if o["status"] == "ok" else f"**{o['status']}** ({o['returncode']})"
    return (
        f"| {o['name']} | {status} | {o['wall_s']:.1f} | {o['peak_rss_mib']:.0f} | {_cell(ratios)} |"
        f" {', '.join(links)} |"
    )


def markdown(doc: dict) -> str:
    """``suite.md`` of a ``suite.json`` document: the machine, one row per benchmark, the failures."""
    rows = [_row(o) for o in doc["benchmarks"]]
    failed = [o for o in doc["benchmarks"] if o["status"] != "ok"]
    total = sum(o["wall_s"] for o in doc["benchmarks"])
    lines = [
        f"# Benchmark suite ({doc['suite']})",
        "",
        machine_markdown(),
        "",
        f"Started {doc['started']}; {len(rows)} benchmarks, {len(rows) - len(failed)} ok, "
        f"{len(failed)} failed, {total:.0f} s in all. Peak RSS: the largest process of the run "
        "(the script or one of its workers). Ratios: the bold `a / b` lines the script printed.",
        "",
        "| benchmark | status | wall s | peak RSS MiB | ratios | output |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    for o in failed:
        lines += ["", f"**{o['name']}** (`{' '.join(o['command'])}`):", "", "```", o["error"], "```"]
    return "\n".join(lines) + "\n"


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    """The runner's flags, shared by ``python -m benchmarks`` and ``operando bench``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = [b.name for b in BENCHMARKS]
    if unknown := [n for n in names if n not in known]:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--suite``, ``-o/--output`` and ``--only`` on ``p``."""
    names = ", ".join(b.name for b in BENCHMARKS)
    p.add_argument("--suite", choices=SUITES, default="quick", help="quick: smoke sizes; full: the results")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for suite.json, suite.md, runs/")
    p.add_argument("--only", type=_names, default=(), help=f"comma-separated subset of: {names}")


def run_args(args: argparse.Namespace) -> int:
    """Run the suite for parsed flags; the exit status (1 if any benchmark failed)."""
    outcomes = run_suite(args.output, suite=args.suite, only=args.only)
    print(f"wrote {args.output / 'suite.md'} and suite.json")
    return int(any(o.status != "ok" for o in outcomes))


def main(argv: list[str] | None = None) -> int:
    return run_args(build_parser().parse_args(argv))
