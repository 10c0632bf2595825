"""The benchmark suite runner (benchmarks/_suite.py) on a tiny suite of real scripts, and `operando bench`."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from operando.cli import main

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

GOOD = """
import sys
from pathlib import Path
assert sys.argv[1:] == {args!r}, sys.argv  # the runner passes the suite's arguments
block = bytearray(64 * 2**20)  # touched: the peak RSS must see it
print("| case | s |\\n|---|---|\\n| a | 1 |")
print("**fast / slow = 2.50** (goal ≥ 2)")
print("Ratio curve_fit / ours: **1,234×**. Peak RSS 0.1 GiB")
if "--full" in sys.argv:
    out = Path(__file__).parent / "results" / "good.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("# good")
"""


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("bench_suite_under_test", BENCHMARKS / "_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fake_suite(suite, folder: Path):
    folder.mkdir()
    (folder / "good.py").write_text(GOOD.format(args=["--quick"]))
    (folder / "good_full.py").write_text(GOOD.format(args=["--full"]))
    (folder / "bad.py").write_text("print('starting')\nraise RuntimeError('synthetic failure')\n")
    (folder / "slow.py").write_text("import time\ntime.sleep(60)\n")
    return (
        suite.Benchmark("good", "good.py", quick=("--quick",), results=("good.md",)),
        suite.Benchmark("bad", "bad.py"),
        suite.Benchmark("slow", "slow.py", timeout_s=(1.0, 1.0)),
    )


def test_quick_suite_records_statuses_ratios_and_peak_memory(suite, tmp_path):
    benches = _fake_suite(suite, tmp_path / "bench")
    out = tmp_path / "out"
    outcomes = suite.run_suite(out, suite="quick", benchmarks=benches, bench_dir=tmp_path / "bench")
    assert [o.status for o in outcomes] == ["ok", "failed", "timeout"]
    doc = json.loads((out / "suite.json").read_text())
    assert doc["suite"] == "quick" and "gpu" in doc["machine"] and doc["machine"]["cpus"] >= 1
    good, bad, slow = doc["benchmarks"]
    assert good["ratios"] == [
        {"name": "fast / slow", "value": "2.50", "number": 2.5},
        {"name": "Ratio curve_fit / ours", "value": "1,234×", "number": 1234.0},
    ]
    assert good["peak_rss_mib"] > 64 and good["results"] == []  # quick runs write no results
    assert bad["returncode"] == 1 and "synthetic failure" in bad["error"]
    assert slow["wall_s"] < 30
    assert "starting" in (out / bad["log"]).read_text()
    md = (out / "suite.md").read_text()
    assert "| good | ok |" in md and "**failed** (1)" in md and "**timeout**" in md
    assert "fast / slow: 2.50" in md and "[log](runs/good.log)" in md and "Machine:" in md


def test_full_suite_links_the_results_files(suite, tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "good_full.py").write_text(GOOD.format(args=["--full"]))
    bench = suite.Benchmark("good", "good_full.py", full=("--full",), results=("good.md", "never.md"))
    out = tmp_path / "out"
    (outcome,) = suite.run_suite(out, suite="full", benchmarks=(bench,), bench_dir=tmp_path / "bench")
    assert outcome.status == "ok"
    assert outcome.results == ["../bench/results/good.md"]  # files that were not written are not linked
    assert "[good.md](../bench/results/good.md)" in (out / "suite.md").read_text()


def test_parse_ratios_reads_the_formats_the_benchmarks_print(suite):
    text = (
        "**operando / sitk: time 1.18, peak RSS 0.98, RSS above imports 0.82**  \n"
        "**stats / raw = 0.48** (goal ≥ 0.8)\n"
        "float32 matmul rate (4096² × 4096²): **166.2 GFLOP/s**.\n"
        "| **total** | **1.2** |\n"
    )
    got = [(r["name"], r["number"]) for r in suite.parse_ratios(text)]
    assert got == [("operando / sitk", 1.18), ("stats / raw", 0.48)]


def test_every_registered_script_exists_and_has_quick_arguments(suite):
    for bench in suite.BENCHMARKS:
        assert (BENCHMARKS / bench.script).is_file(), bench.script
        assert bench.quick, bench.name


def test_operando_bench_help_and_missing_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0 and "--suite" in capsys.readouterr().out
    assert main(["bench", "--benchmarks", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "_suite.py") in err and "source checkout" in err


def test_python_m_benchmarks_rejects_an_unknown_benchmark(suite, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(["-o", "unused", "--only", "codecs,nope"])
    assert exit_.value.code == 2 and "unknown benchmark(s) nope" in capsys.readouterr().err
