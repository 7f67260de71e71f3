"""Measure settings variants of the example service side by side, as ``bench/run.py`` does.

Each variant is a settings module written in a temporary directory: ``example.settings`` plus a
few lines. The variants (and a bare grpc.aio servicer for reference) are measured in interleaved
rounds with the same h2load load; the table gives each one's QPS against a baseline variant.
Used by ``bench/observability.py`` and ``bench/limiter.py``.
"""

from __future__ import annotations

import argparse
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from microframe.test import free_port

from .load import request_body
from .measure import RunOptions, Sample, interleaved, measure_quietly
from .report import write_block
from .servers import Config

#: key -> (label, lines of settings; ``$workdir``, ``$udp`` (a free port) and what ``setup``
#: returns are substituted, as in ``string.Template``)
Variants = dict[str, tuple[str, str]]


def main(
    *,
    doc: str,
    script: str,
    variants: Variants,
    baseline: str,
    targets: list[tuple[str, float]] | list[tuple[str, float, str]],
    begin_mark: str,
    end_mark: str,
    argv: list[str] | None = None,
    setup: Callable[[Path], dict[str, object]] | None = None,
    epilogue: Callable[[Path, dict[str, Config]], str] | None = None,
) -> int:
    """The command line of a variants script: measure ``variants`` (and a bare uvloop servicer)
    against ``baseline``, print the table, and with ``--write`` put it between ``begin_mark``
    and ``end_mark`` in docs/performance.md. ``setup`` starts what the variants need (its values
    are substituted in their settings; a ``cleanup`` callable among them is called at the end);
    ``epilogue`` adds lines below the table."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", help="measured h2load -D per run (default 6s, quick 1s)")
    parser.add_argument("--configs", help="comma-separated subset of b," + ",".join(variants))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write and (args.quick or args.configs):
        parser.error("--write records a full run of every configuration: drop --quick/--configs")
    opts = RunOptions.defaults(args.quick, rounds=args.rounds or None, duration=args.duration)
    configs = {"b": Config("b", "bare grpc.aio, uvloop", "bare", loop="uvloop")}
    for key, (label, _) in variants.items():
        configs[key] = Config(
            key, f"example, {label}", "runserver", settings=f"bench_variant_{key}"
        )
    if args.configs:
        configs = {
            k: c for k, c in configs.items()
            if k in args.configs.split(",") or k == baseline
            or any(len(t) > 2 and t[0] in args.configs.split(",") and t[2] == k for t in targets)
        }
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="microframe-bench-") as tmp:
        workdir = Path(tmp)
        values: dict[str, object] = {"workdir": str(workdir), "udp": free_port()}
        cleanup = None
        if setup is not None:
            values.update(setup(workdir))
            cleanup = values.pop("cleanup", None)
        try:
            for key, (_, body) in variants.items():
                (workdir / f"bench_variant_{key}.py").write_text(
                    f'"""example.settings with a variant for {script}."""\n'
                    "from example.settings import *  # noqa: F401,F403\n"
                    + string.Template(body).substitute(values)
                )
            body_file, frame = request_body(workdir)
            for rnd, key in interleaved(list(configs), opts.rounds):
                sample = measure_quietly(configs[key], rnd, opts, workdir, body_file, frame)
                samples.append(sample)
                print(
                    f"round {rnd + 1}/{opts.rounds} ({key}) {sample.qps:8.0f} req/s  "
                    f"p99 {sample.p99_ms:6.2f} ms  "
                    f"cpu {sample.server_cpu_us_per_call:4.0f} us/call",
                    flush=True,
                )
            tail = epilogue(workdir, configs) if epilogue is not None else ""
        finally:
            if callable(cleanup):
                cleanup()
    qps = {k: statistics.median(s.qps for s in samples if s.config == k) for k in configs}
    cpu = {
        k: statistics.median(s.server_cpu_us_per_call for s in samples if s.config == k)
        for k in configs
    }
    p99 = {k: statistics.median(s.p99_ms for s in samples if s.config == k) for k in configs}
    rows = "".join(
        f"| {k} | {configs[k].label} | {qps[k]:.0f} | {qps[k] / qps[baseline]:.3f} "
        f"| {cpu[k]:.0f} | {p99[k]:.2f} |\n"
        for k in configs
    )
    verdicts = ""
    for target in targets:
        k, bound = target[0], target[1]
        against = target[2] if len(target) > 2 else baseline
        if k not in configs or against not in configs:
            continue
        cost = 1 - qps[k] / qps[against]
        verdicts += (
            f"- `{k}`: costs {cost * 100:.1f} % QPS against `{against}` "
            f"(target <= {bound * 100:.0f} %: **{'met' if cost <= bound else 'missed'}**)\n"
        )
    block = (
        f"`python bench/{script}` ({time.strftime('%Y-%m-%d')}; {opts.rounds} interleaved rounds, "
        f"h2load -c {opts.clients} -m {opts.streams} -D {opts.duration}; medians):\n\n"
        f"| | configuration | QPS | / {baseline} | server CPU µs per call | p99 ms |\n"
        "|---|---|---:|---:|---:|---:|\n"
        f"{rows}\n{verdicts}{tail}"
    )
    print(block)
    if args.write:
        write_block(block, begin_mark, end_mark)
    return 0
