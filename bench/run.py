#!/usr/bin/env python
"""Benchmark the example service against a bare grpc.aio servicer, side by side, with h2load.

One run starts each configuration in turn, checks that it really answers gRPC successes, loads
it with the same h2load command, and reads its memory:

    a   bare grpc.aio servicer, default asyncio loop          (bench/bare_server.py)
    b   bare grpc.aio servicer, uvloop                        (bench/bare_server.py --loop uvloop)
    b2  the same, 2 processes sharing the port                (... --loop uvloop --processes 2)
    c   example service, default settings on grpc.aio, one process
                                                          (manage.py runserver --transport grpc.aio)
    ca  the same, but GRPC EVENT_LOOP="asyncio"
    d   the same, --workers 2
    n   example service, default settings, native transport   (... runserver --transport native,
                                                          what "auto" picks with the native extra)
    n2  the same, --workers 2

``--workers 1`` is (c): runserver serves in-process when it is given one worker. Rounds are
interleaved (a, b, b2, ca, c, d, n, n2, then again in a rotated order) and every figure is the
median over the rounds. ``--write`` replaces the results block of docs/performance.md. The
measuring is ``bench/harness``'s (see bench/README.md); this file is the command line and a
run's sequence.

    python bench/run.py                 # the full run (about 8 minutes)
    python bench/run.py --quick         # a smoke run of a few seconds
    python bench/run.py --write         # full run, then rewrite docs/performance.md's figures
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from harness import DOC, ROOT, BenchError
from harness.load import parse_duration, request_body
from harness.measure import RunOptions, Sample, interleaved, measure_quietly
from harness.report import machine, report, write_block
from harness.servers import configurations, write_helper_settings
from harness.summary import ratios, summarize


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, RunOptions]:
    """The command line, and the options of the run it asks for (quick or full defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 6, quick 1)")
    parser.add_argument("--duration", help="measured h2load -D per run (default 6s, quick 1s)")
    parser.add_argument(
        "--warmup", help="h2load warm-up run before it (default 2s, quick 300ms; 0: none)"
    )
    parser.add_argument(
        "--latency-duration", help="extra one-call-at-a-time run (default 2s, quick 300ms; 0: none)"
    )
    parser.add_argument(
        "-c", "--clients", type=int, default=4, help="h2load connections (default 4)"
    )
    parser.add_argument(
        "-m", "--streams", type=int, default=16, help="concurrent streams per connection (16)"
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated subset of a,b,b2,ca,c,d,n,n2 (default all; quick a,b,c,d,n)",
    )
    parser.add_argument(
        "--settings", help="settings module for (c)/(d) instead of example.settings"
    )
    parser.add_argument(
        "--runserver-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every runserver command (repeatable; use --runserver-arg=--x)",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.15,
        help="CPU cores other programs may use during a measured run before it is measured "
        "again (0.15)",
    )
    parser.add_argument(
        "--retries", type=int, help="measurements again when disturbed (default 2, quick 0)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for a quiet machine before each run (default 30, quick 0)",
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="seconds before reading the idle RSS"
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples and summary there")
    write = parser.add_mutually_exclusive_group()
    write.add_argument(
        "--write", action="store_true", help=f"rewrite the results block of {DOC.relative_to(ROOT)}"
    )
    write.add_argument(
        "--no-write", dest="write", action="store_false", help="do not touch the docs (default)"
    )
    opts = parser.parse_args(argv)
    run = RunOptions.defaults(
        opts.quick,
        # An empty or zero value asks for the default, as it always has.
        rounds=opts.rounds or None,
        duration=opts.duration or None,
        warmup=opts.warmup or None,
        latency_duration=opts.latency_duration or None,
        clients=opts.clients,
        streams=opts.streams,
        settle=opts.settle,
        retries=opts.retries,
        quiet_wait=opts.quiet_wait,
        max_other_load=opts.max_other_load,
    )
    for value in (run.duration, run.warmup, run.latency_duration):
        parse_duration(value)
    if opts.write and (opts.quick or opts.configs):
        parser.error("--write records a full run of every configuration: drop --quick/--configs")
    if run.settle < 0 or run.rounds < 1:
        parser.error("--rounds must be >= 1 and --settle >= 0")
    return opts, run


def progress(sample: Sample, rounds: int, seconds: float) -> str:
    """The line printed after each measurement."""
    per_worker = (
        f" ({' + '.join(f'{c:.2f}' for c in sample.per_worker_cores)})"
        if len(sample.per_worker_cores) > 1
        else ""
    )
    return (
        f"round {sample.round + 1}/{rounds} ({sample.config}) {sample.qps:8.0f} req/s  "
        f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
        f"rss {sample.rss_idle_kb / 1024:6.1f} -> {sample.rss_after_kb / 1024:6.1f} MB  "
        f"cpu {sample.server_cpu_us_per_call:4.0f} us/call, cores: server "
        f"{sample.server_cores:.2f}{per_worker} h2load {sample.loadgen_cores:.2f} "
        f"other {sample.other_load_cores:.2f}  "
        f"[{sample.loop}, {sample.check}] {seconds:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    opts, run = parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    configs = configurations(opts.settings, tuple(opts.runserver_arg))
    wanted = (opts.configs or ("a,b,c,d,n" if opts.quick else "a,b,b2,ca,c,d,n,n2")).split(",")
    unknown = [k for k in wanted if k not in configs]
    if unknown:
        print(f"unknown configuration(s) {unknown}; choose among {list(configs)}", file=sys.stderr)
        return 2
    configs = {k: configs[k] for k in configs if k in wanted}
    samples: list[Sample] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="microframe-bench-") as tmp:
        workdir = Path(tmp)
        write_helper_settings(workdir, opts.settings)
        body, frame = request_body(workdir)
        for rnd, key in interleaved(list(configs), run.rounds):
            t0 = time.monotonic()
            try:
                sample = measure_quietly(configs[key], rnd, run, workdir, body, frame)
            except BenchError as err:
                print(f"FAILED {err}", file=sys.stderr)
                return 1
            samples.append(sample)
            print(progress(sample, run.rounds, time.monotonic() - t0), flush=True)
    summary = summarize(samples, configs)
    r = ratios(summary, samples)
    info = machine()
    command = (
        "python bench/run.py"
        + (" --quick" if opts.quick else "")
        + (f" --settings {opts.settings}" if opts.settings else "")
        + "".join(f" --runserver-arg={a}" for a in opts.runserver_arg)
    )
    block = report(summary, r, command, run, info, samples)
    print()
    print(block)
    print(f"(total {time.monotonic() - started:.0f} s)")
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "samples": [asdict(s) for s in samples],
                    "summary": summary,
                    "ratios": r,
                    "machine": info,
                },
                indent=2,
            )
        )
    if opts.write:
        write_block(block)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
