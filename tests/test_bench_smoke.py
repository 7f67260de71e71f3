"""The benchmark runs end to end: every configuration starts, answers, and is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.env import ROOT, base_env, require_binary


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script> args`` from the checkout; fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_bench_quick_measures_every_configuration(tmp_path: Path) -> None:
    require_binary("h2load")
    out = tmp_path / "bench.json"
    proc = run_bench("run.py", "--quick", "--no-write", "--json", str(out))
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert set(summary) == {"a", "b", "c", "d", "n"}
    for key, figures in summary.items():
        assert figures["qps"] > 0, key
        assert 0 < figures["p50_ms"] <= figures["p99_ms"], key
        assert figures["rss_idle_mb"] > 0 and figures["rss_after_mb"] > 0, key
    assert summary["a"]["loop"] == "asyncio"
    assert summary["b"]["loop"] == "uvloop"
    assert summary["d"]["workers"] == 2
    (d_sample,) = [s for s in result["samples"] if s["config"] == "d"]
    assert len(d_sample["rss_idle_per_worker_kb"]) == 2
    for name in ("qps_c_a", "qps_d_c", "p99_c_a", "rss_c_a", "qps_n_a", "p99_n_a"):
        assert result["ratios"]["of_medians"][name] is not None, name
    # The printed table has a row per configuration.
    for key in ("(a)", "(b)", "(c)", "(d)", "(n)"):
        assert f"| {key} " in proc.stdout


def test_bench_discovery_quick_prints_every_table() -> None:
    require_binary("etcd")
    try:
        import aetcd  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("aetcd is not installed (pip install -e '.[etcd]')")
    out = run_bench("discovery.py", "--quick").stdout
    for title in (
        "**One change at a time**",
        "**Churn**",
        "**Pick cost**",
        "**`p2c_ewma` fairness**",
        "**Dead fleet**",
        "**File registry**",
    ):
        assert title in out, title
    assert "not measured" not in out, out
    # A row per fleet, balancer and run, each with its figures.
    assert "| 1,000 | 12 |" in out  # one change at a time: 4 cycles of 3 changes
    assert "| 1,000 | 100 | 2 | 400 of 400 |" in out  # churn: every write seen
    for name in ("random", "round_robin", "weighted_random", "p2c_ewma"):
        assert f"| `{name}` | 10 % |" in out, name
    assert "| 3 live + 997 dead (1000 listed) | 1,500 |" in out
    assert "| 100 | 9 |" in out  # the file registry


def test_bench_validation_quick_measures_every_configuration() -> None:
    require_binary("h2load")
    proc = run_bench("validation.py", "--quick")
    for key in ("b", "nov", "val", "nnov", "nval"):
        assert f"| ({key}) " in proc.stdout or f"({key})" in proc.stdout, proc.stdout
