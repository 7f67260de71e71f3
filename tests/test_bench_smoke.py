"""The benchmark runs end to end: every configuration starts, answers, and is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.env import ROOT, base_env, require_binary


def test_bench_quick_measures_every_configuration(tmp_path: Path) -> None:
    require_binary("h2load")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--no-write",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
