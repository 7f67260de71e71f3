"""The figures of a run: medians over the rounds, and the ratios between configurations.

Every ratio is given three ways (``ratios``): of the medians, as the median of the per-round
ratios, and, for the QPS of one process, from the server CPU per call, so that a reader can
tell a real difference from the noise of a shared machine.
"""

from __future__ import annotations

import statistics
from typing import Any

from .measure import Sample
from .servers import Config


def med(values: list[float | int | None]) -> float | None:
    """The median of the values present (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mb(values_kb: list[float | int | None]) -> float | None:
    """The median of KiB values, in MiB."""
    value = med(values_kb)
    return None if value is None else value / 1024


def summarize(samples: list[Sample], configs: dict[str, Config]) -> dict[str, dict[str, Any]]:
    """Per configuration, its label and the medians of its samples over the rounds."""
    summary: dict[str, dict[str, Any]] = {}
    for key, config in configs.items():
        mine = [s for s in samples if s.config == key]
        if not mine:
            continue
        workers = config.workers
        summary[key] = {
            "label": config.label,
            "loop": mine[0].loop,
            "workers": workers,
            "rounds": len(mine),
            "qps": med([s.qps for s in mine]),
            "qps_all": [round(s.qps) for s in mine],
            "p50_ms": med([s.p50_ms for s in mine]),
            "p99_ms": med([s.p99_ms for s in mine]),
            "mean_ms": med([s.mean_ms for s in mine]),
            "lat1_p50_ms": med([s.lat1_p50_ms for s in mine]),
            "lat1_p99_ms": med([s.lat1_p99_ms for s in mine]),
            "cpu_us": med([s.server_cpu_us_per_call for s in mine]),
            "server_cores": med([s.server_cores for s in mine]),
            "loadgen_cores": med([s.loadgen_cores for s in mine]),
            "other_load_max": max(s.other_load_cores for s in mine),
            "rss_idle_mb": mb([s.rss_idle_kb for s in mine]),
            "rss_after_mb": mb([s.rss_after_kb for s in mine]),
            "rss_idle_worker_mb": mb([s.rss_idle_kb / workers for s in mine]),
            "rss_after_worker_mb": mb([s.rss_after_kb / workers for s in mine]),
            "rss_supervisor_mb": mb([s.rss_supervisor_kb for s in mine]),
        }
    return summary


#: Every ratio computed: name -> (x, y, metric, shown as an overhead in percent).
RATIOS = {
    "qps_c_a": ("c", "a", "qps", False),
    "qps_c_b": ("c", "b", "qps", False),
    "qps_ca_a": ("ca", "a", "qps", False),
    "qps_b_a": ("b", "a", "qps", False),
    "qps_d_c": ("d", "c", "qps", False),
    "qps_b2_b": ("b2", "b", "qps", False),
    "p99_c_a": ("c", "a", "p99_ms", True),
    "p99_c_b": ("c", "b", "p99_ms", True),
    "p99_ca_a": ("ca", "a", "p99_ms", True),
    "lat1_p99_c_a": ("c", "a", "lat1_p99_ms", True),
    "lat1_p99_c_b": ("c", "b", "lat1_p99_ms", True),
    "lat1_p99_ca_a": ("ca", "a", "lat1_p99_ms", True),
    "qps_n_a": ("n", "a", "qps", False),
    "qps_n_b": ("n", "b", "qps", False),
    "qps_n_c": ("n", "c", "qps", False),
    "qps_n2_n": ("n2", "n", "qps", False),
    "qps_n2_b2": ("n2", "b2", "qps", False),
    "p99_n_a": ("n", "a", "p99_ms", True),
    "p99_n_b": ("n", "b", "p99_ms", True),
    "lat1_p99_n_a": ("n", "a", "lat1_p99_ms", True),
    "rss_c_a": ("c", "a", "rss_idle_mb", False),
    "rss_c_b": ("c", "b", "rss_idle_mb", False),
}

SAMPLE_METRIC = {
    "qps": "qps",
    "p99_ms": "p99_ms",
    "lat1_p99_ms": "lat1_p99_ms",
    "rss_idle_mb": "rss_idle_kb",
}


def ratios(
    summary: dict[str, dict[str, Any]], samples: list[Sample]
) -> dict[str, dict[str, float]]:
    """Every ratio three ways: of the medians (the figure), the median of the per-round ratios
    (each round's two runs are minutes apart at most), and, for the QPS of one process, the
    inverse ratio of the server CPU spent per call (insensitive to other programs' load)."""
    of_medians: dict[str, float] = {}
    paired: dict[str, float] = {}
    by_cpu: dict[str, float] = {}
    for name, (x, y, metric, overhead) in RATIOS.items():
        if x not in summary or y not in summary:
            continue
        shift = 1.0 if overhead else 0.0
        if summary[x][metric] and summary[y][metric]:
            of_medians[name] = summary[x][metric] / summary[y][metric] - shift
        field_name = SAMPLE_METRIC[metric]
        per_round = []
        for rnd in sorted({s.round for s in samples}):
            sx = [getattr(s, field_name) for s in samples if s.config == x and s.round == rnd]
            sy = [getattr(s, field_name) for s in samples if s.config == y and s.round == rnd]
            if sx and sy and sx[0] and sy[0]:
                per_round.append(sx[0] / sy[0] - shift)
        if per_round:
            paired[name] = statistics.median(per_round)
        if metric == "qps" and summary[x]["workers"] == summary[y]["workers"] == 1:
            by_cpu[name] = summary[y]["cpu_us"] / summary[x]["cpu_us"]
    return {"of_medians": of_medians, "paired": paired, "by_cpu": by_cpu}
