"""The report of a run: its tables, the machine's description, and docs/performance.md.

``report`` is the results block of docs/performance.md (``bench/run.py --write``);
``write_block`` replaces the block between two markers there, which every script's ``--write``
uses (``<!-- bench:results:begin -->`` ... ``<!-- bench:results:end -->`` and the like).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import DOC
from .measure import RunOptions, Sample
from .summary import RATIOS

BEGIN_MARK = "<!-- bench:results:begin -->"
END_MARK = "<!-- bench:results:end -->"

#: Targets of DESIGN.md §8: (label, ratio key, comparison, bound).
TARGETS = [
    ("QPS (c)/(a)", "qps_c_a", ">=", 0.9),
    ("QPS (c)/(a), uvloop installed and used by (c)", "qps_c_a", ">=", 1.0),
    ("p99 overhead (c) vs (a), under load", "p99_c_a", "<=", 0.10),
    ("idle RSS (c)/(a)", "rss_c_a", "<=", 1.5),
    ("QPS (d)/(c), 2 workers vs 1", "qps_d_c", ">=", 1.4),
    ("QPS (n)/(a): the native transport's default stack vs bare grpc.aio", "qps_n_a", ">=", 4.0),
    ("p99 overhead (n) vs (a), under load", "p99_n_a", "<=", 0.0),
]


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash where there is none."""
    return "–" if value is None else format(value, spec)


def results_table(summary: dict[str, dict[str, Any]]) -> str:
    """The results table: a row per configuration, its medians over the rounds."""
    lines = [
        "| config | loop | QPS (median) | QPS per round | p50 ms | p99 ms "
        "| p50 / p99 ms at c=1 m=1 | server CPU µs/call | CPU cores: server + h2load "
        "| RSS idle MB | RSS after load MB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        if s["workers"] > 1:
            rss_idle = (
                f"{s['rss_idle_mb']:.1f} ({s['workers']} × {s['rss_idle_worker_mb']:.1f}; "
                f"+ parent {s['rss_supervisor_mb']:.1f})"
            )
            rss_after = f"{s['rss_after_mb']:.1f} ({s['workers']} × {s['rss_after_worker_mb']:.1f})"
        else:
            rss_idle = f"{s['rss_idle_mb']:.1f}"
            rss_after = f"{s['rss_after_mb']:.1f}"
        lines.append(
            f"| ({key}) {s['label']} | {s['loop']} | {s['qps']:.0f} | "
            f"{', '.join(str(q) for q in s['qps_all'])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{fmt(s['lat1_p50_ms'], '.3f')} / {fmt(s['lat1_p99_ms'], '.3f')} | "
            f"{s['cpu_us']:.0f} | "
            f"{s['server_cores']:.2f} + {s['loadgen_cores']:.2f} | "
            f"{rss_idle} | {rss_after} |"
        )
    return "\n".join(lines)


def verdict(value: float, op: str, bound: float) -> str:
    """Whether ``value`` meets the target ``op bound`` (``>=`` or ``<=``), in words."""
    ok = value >= bound if op == ">=" else value <= bound
    return "met" if ok else "**missed**"


def ratios_table(r: dict[str, dict[str, float]]) -> str:
    """The ratios table: the targets with their verdicts, then the ratios for information."""
    lines = [
        "| ratio | of the medians | median of per-round ratios | from server CPU per call "
        "| target | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def shown(name: str, table: str) -> str:
        value = r[table].get(name)
        if value is None:
            return "–"
        return f"{value * 100:+.1f} %" if RATIOS[name][3] else f"{value:.2f}"

    for label, name, op, bound in TARGETS:
        if name not in r["of_medians"]:
            continue
        target = f"{op} {bound * 100:+.0f} %" if RATIOS[name][3] else f"{op} {bound:.1f}"
        lines.append(
            f"| {label} | {shown(name, 'of_medians')} | {shown(name, 'paired')} | "
            f"{shown(name, 'by_cpu')} | {target} | {verdict(r['of_medians'][name], op, bound)} |"
        )
    info = [
        ("QPS (c)/(b): the framework at equal loop (uvloop)", "qps_c_b"),
        ("QPS (ca)/(a): the framework at equal loop (asyncio)", "qps_ca_a"),
        ("QPS (b)/(a): uvloop alone", "qps_b_a"),
        ("QPS (b2)/(b): bare grpc.aio, 2 processes vs 1", "qps_b2_b"),
        ("p99 overhead (c) vs (b), under load", "p99_c_b"),
        ("p99 overhead (ca) vs (a), under load", "p99_ca_a"),
        ("p99 overhead (c) vs (a), one call at a time", "lat1_p99_c_a"),
        ("p99 overhead (c) vs (b), one call at a time", "lat1_p99_c_b"),
        ("p99 overhead (ca) vs (a), one call at a time", "lat1_p99_ca_a"),
        ("idle RSS (c)/(b)", "rss_c_b"),
        ("QPS (n)/(b): the native transport vs bare grpc.aio on uvloop", "qps_n_b"),
        ("QPS (n)/(c): the native transport vs grpc.aio, the same stack", "qps_n_c"),
        ("QPS (n2)/(n): native, 2 workers vs 1", "qps_n2_n"),
        ("QPS (n2)/(b2): native, 2 workers vs bare grpc.aio, 2 processes", "qps_n2_b2"),
        ("p99 overhead (n) vs (b), under load", "p99_n_b"),
        ("p99 overhead (n) vs (a), one call at a time", "lat1_p99_n_a"),
    ]
    for label, name in info:
        if name in r["of_medians"]:
            lines.append(
                f"| {label} | {shown(name, 'of_medians')} | {shown(name, 'paired')} | "
                f"{shown(name, 'by_cpu')} | (for information) | |"
            )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the figures depend on: CPUs, memory, kernel, Python and the versions measured."""
    cpuinfo: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            cpuinfo[key.strip()] = value.strip()
    cpu = (
        f"{cpuinfo.get('model name', 'unknown')} (family {cpuinfo.get('cpu family', '?')}, "
        f"model {cpuinfo.get('model', '?')}, {cpuinfo.get('cpu MHz', '?')} MHz"
        + (", virtual machine" if "hypervisor" in cpuinfo.get("flags", "").split() else "")
        + ")"
    )
    versions = {}
    for name in ("grpc", "google.protobuf", "uvloop"):
        try:
            module = __import__(name, fromlist=["__version__"])
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = "not installed"
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cpus": f"{os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})",
        "cpu": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": versions["grpc"],
        "protobuf": versions["google.protobuf"],
        "uvloop": versions["uvloop"],
        "h2load": h2,
    }


def report(
    summary: dict[str, dict[str, Any]],
    r: dict[str, dict[str, float]],
    command: str,
    opts: RunOptions,
    info: dict[str, str],
    samples: list[Sample],
) -> str:
    """The results block: how and where it was measured, the results and the ratios tables;
    ``command`` is the command line shown."""
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = (
        f"h2load -t 1 -c {opts.clients} -m {opts.streams}: warm-up {opts.warmup}, then measured "
        f"-D {opts.duration}"
        + (f", then -c 1 -m 1 -D {opts.latency_duration}" if opts.latency_duration != "0" else "")
    )
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    again = sum(s.attempts - 1 for s in samples)
    quiet = (
        f" Other programs used at most {max(s.other_load_cores for s in samples):.2f} cores during "
        f"a kept measurement (limit {opts.max_other_load:.2f}; {again} measurement(s) done again "
        f"because of them)."
    )
    return (
        f"Measured {when} with `{command}`: {opts.rounds} interleaved round(s), median shown. "
        f"Load: {load}.{quiet}\n\n"
        f"{machine_lines}\n\n"
        f"{results_table(summary)}\n\n"
        f"{ratios_table(r)}\n"
    )


def write_block(
    block: str, begin_mark: str = BEGIN_MARK, end_mark: str = END_MARK, path: Path = DOC
) -> None:
    """Replace what stands between ``begin_mark`` and ``end_mark`` in ``path`` with ``block``.

    The markers stay, each on its line, with a blank line after the first: the rest of the
    page (the method and the analysis around the figures) is written by hand.
    """
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(begin_mark), text.find(end_mark)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path} has no {begin_mark} ... {end_mark} block to replace")
    path.write_text(
        text[: begin + len(begin_mark)] + "\n\n" + block + "\n" + text[end:], encoding="utf-8"
    )
