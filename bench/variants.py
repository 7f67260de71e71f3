"""Measure settings variants of the example service side by side (``bench/run.py``'s machinery).

Each variant is a settings module written in a temporary directory: ``example.settings`` plus a
few lines. The variants (and a bare grpc.aio servicer for reference) are measured in interleaved
rounds with the same h2load load; the table gives each one's QPS against a baseline variant.
Used by ``bench/observability.py`` and ``bench/limiter.py``.
"""

from __future__ import annotations

import argparse
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run  # noqa: E402

#: key -> (label, lines of settings; ``$workdir``, ``$udp`` (a free port) and what ``setup``
#: returns are substituted, as in ``string.Template``)
Variants = dict[str, tuple[str, str]]


def main(
    *,
    doc: str,
    script: str,
    variants: Variants,
    baseline: str,
    targets: list[tuple[str, float]],
    begin_mark: str,
    end_mark: str,
    argv: list[str] | None = None,
    setup: Callable[[Path], dict[str, object]] | None = None,
    epilogue: Callable[[Path, dict[str, run.Config]], str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", help="measured h2load -D per run (default 6s, quick 1s)")
    parser.add_argument("--configs", help="comma-separated subset of b," + ",".join(variants))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write and (args.quick or args.configs):
        parser.error("--write records a full run of every configuration: drop --quick/--configs")
    opts = run.parse_args((["--quick"] if args.quick else []) + (["--duration", args.duration] if args.duration else []))
    if args.rounds:
        opts.rounds = args.rounds
    configs = {"b": run.Config("b", "bare grpc.aio, uvloop", "bare", loop="uvloop")}
    for key, (label, _) in variants.items():
        configs[key] = run.Config(key, f"example, {label}", "runserver", settings=f"bench_variant_{key}")
    if args.configs:
        configs = {k: c for k, c in configs.items() if k in args.configs.split(",") or k == baseline}
    samples: list[run.Sample] = []
    with tempfile.TemporaryDirectory(prefix="microframe-bench-") as tmp:
        workdir = Path(tmp)
        values: dict[str, object] = {"workdir": str(workdir), "udp": run.free_port()}
        cleanup = None
        if setup is not None:
            values.update(setup(workdir))
            cleanup = values.pop("cleanup", None)
        try:
            for key, (_, body) in variants.items():
                (workdir / f"bench_variant_{key}.py").write_text(
                    f'"""example.settings with a variant for {script}."""\n'
                    "from example.settings import *  # noqa: F401,F403\n" + string.Template(body).substitute(values)
                )
            body_file, frame = run.request_body(workdir)
            order = list(configs)
            for rnd in range(opts.rounds):
                for key in order[rnd % len(order):] + order[: rnd % len(order)]:
                    sample = run.measure_quietly(configs[key], rnd, opts, workdir, body_file, frame)
                    samples.append(sample)
                    print(f"round {rnd + 1}/{opts.rounds} ({key}) {sample.qps:8.0f} req/s  "
                          f"p99 {sample.p99_ms:6.2f} ms  cpu {sample.server_cpu_us_per_call:4.0f} us/call", flush=True)
            tail = epilogue(workdir, configs) if epilogue is not None else ""
        finally:
            if callable(cleanup):
                cleanup()
    qps = {k: statistics.median(s.qps for s in samples if s.config == k) for k in configs}
    cpu = {k: statistics.median(s.server_cpu_us_per_call for s in samples if s.config == k) for k in configs}
    p99 = {k: statistics.median(s.p99_ms for s in samples if s.config == k) for k in configs}
    rows = "".join(
        f"| {k} | {configs[k].label} | {qps[k]:.0f} | {qps[k] / qps[baseline]:.3f} | {cpu[k]:.0f} | {p99[k]:.2f} |\n"
        for k in configs
    )
    verdicts = "".join(
        f"- `{k}`: costs {(1 - qps[k] / qps[baseline]) * 100:.1f} % QPS against `{baseline}` "
        f"(target <= {bound * 100:.0f} %: **{'met' if 1 - qps[k] / qps[baseline] <= bound else 'missed'}**)\n"
        for k, bound in targets if k in configs
    )
    block = (
        f"`python bench/{script}` ({time.strftime('%Y-%m-%d')}; {opts.rounds} interleaved rounds, "
        f"h2load -c {opts.clients} -m {opts.streams} -D {opts.duration}; medians):\n\n"
        f"| | configuration | QPS | / {baseline} | server CPU µs per call | p99 ms |\n|---|---|---:|---:|---:|---:|\n"
        f"{rows}\n{verdicts}{tail}"
    )
    print(block)
    if args.write:
        text = run.DOC.read_text(encoding="utf-8")
        begin, end = text.find(begin_mark), text.find(end_mark)
        if begin < 0 or end < begin:
            raise SystemExit(f"{run.DOC} has no {begin_mark} ... {end_mark} block")
        run.DOC.write_text(text[: begin + len(begin_mark)] + "\n\n" + block + "\n" + text[end:], encoding="utf-8")
    return 0
