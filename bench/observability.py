#!/usr/bin/env python
"""What tracing and the access log cost the example service, side by side with h2load.

One run measures, in interleaved rounds (``bench/run.py``'s machinery: same h2load load, same
checks that every call really succeeded and was counted):

    b     bare grpc.aio servicer, uvloop (the reference)
    off   example service, default stack with tracing off and the access log off
    t0    ... tracing on (jaeger), sampling rate 0
    t1    ... tracing on (jaeger), sampling rate 1 % (spans sent over UDP to a port nothing
          reads: the kernel drops them, as a lost agent would)
    log   ... the access log on, written to a file (tracing off): the default settings

Targets (issue "Observability"): tracing at rate 0 costs <= 3 % QPS and the access log <= 5 %,
against ``off``.

    python bench/observability.py --quick      # a smoke run
    python bench/observability.py --write      # full run, written to docs/performance.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

BEGIN_MARK = "<!-- bench:observability:begin -->"
END_MARK = "<!-- bench:observability:end -->"

VARIANTS = {
    "off": ("default stack, tracing off, access log off", 'TRACING = {"ENABLED": False}\nACCESS_LOG = {"ENABLED": False}\n'),
    "t0": ("... tracing on (jaeger), sampling rate 0", 'ACCESS_LOG = {"ENABLED": False}\nTRACING = {"ENABLED": True, "BACKEND": "jaeger", "SAMPLER": {"type": "probabilistic", "param": 0.0}, "REPORTER": {"LOCAL_AGENT_HOST_PORT": "127.0.0.1:%(udp)d"}}\n'),
    "t1": ("... tracing on (jaeger), sampling rate 1 %", 'ACCESS_LOG = {"ENABLED": False}\nTRACING = {"ENABLED": True, "BACKEND": "jaeger", "SAMPLER": {"type": "probabilistic", "param": 0.01}, "REPORTER": {"LOCAL_AGENT_HOST_PORT": "127.0.0.1:%(udp)d"}}\n'),
    "log": ("... access log on, to a file", 'TRACING = {"ENABLED": False}\nACCESS_LOG = {"ENABLED": True}\nLOG = {"DIR": %(logs)r}\n'),
}
TARGETS = [("t0", 0.03), ("log", 0.05)]


def write_settings(workdir: Path) -> None:
    udp = run.free_port()
    for key, (_, body) in VARIANTS.items():
        (workdir / f"bench_obs_{key}.py").write_text(
            '"""example.settings with a variant for bench/observability.py."""\n'
            "from example.settings import *  # noqa: F401,F403\n"
            + body % {"udp": udp, "logs": str(workdir / f"logs-{key}")}
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", help="measured h2load -D per run (default 6s, quick 1s)")
    parser.add_argument("--configs", help="comma-separated subset of b," + ",".join(VARIANTS))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write and (args.quick or args.configs):
        parser.error("--write records a full run of every configuration: drop --quick/--configs")
    # bench/run.py's options, for its measuring functions.
    opts = run.parse_args((["--quick"] if args.quick else []) + (["--duration", args.duration] if args.duration else []))
    if args.rounds:
        opts.rounds = args.rounds
    configs = {"b": run.Config("b", "bare grpc.aio, uvloop", "bare", loop="uvloop")}
    for key, (label, _) in VARIANTS.items():
        configs[key] = run.Config(key, f"example, {label}", "runserver", settings=f"bench_obs_{key}")
    if args.configs:
        configs = {k: c for k, c in configs.items() if k in args.configs.split(",") or k == "off"}
    samples: list[run.Sample] = []
    with tempfile.TemporaryDirectory(prefix="microframe-bench-obs-") as tmp:
        workdir = Path(tmp)
        write_settings(workdir)
        body, frame = run.request_body(workdir)
        order = list(configs)
        for rnd in range(opts.rounds):
            for key in order[rnd % len(order):] + order[: rnd % len(order)]:
                sample = run.measure_quietly(configs[key], rnd, opts, workdir, body, frame)
                samples.append(sample)
                print(f"round {rnd + 1}/{opts.rounds} ({key}) {sample.qps:8.0f} req/s  p99 {sample.p99_ms:6.2f} ms  "
                      f"cpu {sample.server_cpu_us_per_call:4.0f} us/call", flush=True)
        lines = sum(1 for f in (workdir / "logs-log").glob("*.log") for _ in f.open()) if "log" in configs else 0
    qps = {k: statistics.median(s.qps for s in samples if s.config == k) for k in configs}
    cpu = {k: statistics.median(s.server_cpu_us_per_call for s in samples if s.config == k) for k in configs}
    p99 = {k: statistics.median(s.p99_ms for s in samples if s.config == k) for k in configs}
    rows = "".join(
        f"| {k} | {configs[k].label} | {qps[k]:.0f} | {qps[k] / qps['off']:.3f} | {cpu[k]:.0f} | {p99[k]:.2f} |\n"
        for k in configs
    )
    verdicts = "".join(
        f"- `{k}`: costs {(1 - qps[k] / qps['off']) * 100:.1f} % QPS against `off` "
        f"(target <= {bound * 100:.0f} %: **{'met' if 1 - qps[k] / qps['off'] <= bound else 'missed'}**)\n"
        for k, bound in TARGETS if k in configs
    )
    block = (
        f"`python bench/observability.py` ({time.strftime('%Y-%m-%d')}; {opts.rounds} interleaved rounds, "
        f"h2load -c {opts.clients} -m {opts.streams} -D {opts.duration}; medians):\n\n"
        "| | configuration | QPS | / off | server CPU µs per call | p99 ms |\n|---|---|---:|---:|---:|---:|\n"
        f"{rows}\n{verdicts}\nThe access log wrote {lines} lines in the `log` runs.\n"
    )
    print(block)
    if args.write:
        text = run.DOC.read_text(encoding="utf-8")
        begin, end = text.find(BEGIN_MARK), text.find(END_MARK)
        if begin < 0 or end < begin:
            raise SystemExit(f"{run.DOC} has no {BEGIN_MARK} ... {END_MARK} block")
        run.DOC.write_text(text[: begin + len(BEGIN_MARK)] + "\n\n" + block + "\n" + text[end:], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
