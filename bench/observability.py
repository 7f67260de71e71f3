#!/usr/bin/env python
"""What tracing and the access log cost the example service, side by side with h2load.

One run measures, in interleaved rounds (``bench/harness``, as ``bench/run.py``: same h2load
load, same checks that every call really succeeded and was counted):

    b     bare grpc.aio servicer, uvloop (the reference)
    off   example service, default stack on grpc.aio with tracing off and the access log off
    t0    ... tracing on (jaeger), sampling rate 0
    t1    ... tracing on (jaeger), sampling rate 1 % (spans sent over UDP to a port nothing
          reads: the kernel drops them, as a lost agent would)
    log   ... the access log on, written to a file (tracing off)
    noff, nt0, nt1, nlog   the same four on the native transport

Targets: tracing at rate 0 costs <= 3 % QPS and the access log <= 10 %, against ``off`` (and
on the native transport against ``noff``).

    python bench/observability.py --quick      # a smoke run
    python bench/observability.py --write      # full run, written to docs/performance.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.variants import main

JAEGER = (
    'TRACING = {"ENABLED": True, "BACKEND": "jaeger", '
    '"SAMPLER": {"type": "probabilistic", "param": %s}, '
    '"REPORTER": {"LOCAL_AGENT_HOST_PORT": "127.0.0.1:$udp"}}\n'
)
#: The four on grpc.aio (GRPC["TRANSPORT"] = "grpc.aio": "auto" picks native when installed).
GRPC_AIO = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "grpc.aio"}\n'
VARIANTS = {
    "off": (
        "default stack, tracing off, access log off",
        'TRACING = {"ENABLED": False}\nACCESS_LOG = {"ENABLED": False}\n',
    ),
    "t0": (
        "... tracing on (jaeger), sampling rate 0",
        'ACCESS_LOG = {"ENABLED": False}\n' + JAEGER % 0.0,
    ),
    "t1": (
        "... tracing on (jaeger), sampling rate 1 %",
        'ACCESS_LOG = {"ENABLED": False}\n' + JAEGER % 0.01,
    ),
    "log": (
        "... access log on, to a file",
        'TRACING = {"ENABLED": False}\nACCESS_LOG = {"ENABLED": True}\n'
        'LOG = {"DIR": "$workdir/logs-log"}\n',
    ),
}
#: The same on the native transport (GRPC["TRANSPORT"] = "native").
NATIVE = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "native"}\n'
VARIANTS.update({
    f"n{key}": (f"{label}, native transport", NATIVE + body)
    for key, (label, body) in list(VARIANTS.items())
})
VARIANTS.update({key: (label, GRPC_AIO + body) for key, (label, body) in VARIANTS.items()
                 if not key.startswith("n")})
VARIANTS["nlog"] = (VARIANTS["nlog"][0], VARIANTS["nlog"][1].replace("logs-log", "logs-nlog"))


def lines_written(workdir: Path, configs: dict) -> str:
    if "log" not in configs:
        return ""
    lines = sum(1 for f in (workdir / "logs-log").glob("*.log") for _ in f.open())
    native = sum(1 for f in (workdir / "logs-nlog").glob("*.log") for _ in f.open())
    return f"\nThe access log wrote {lines} lines in the `log` runs, {native} in the `nlog` runs.\n"


if __name__ == "__main__":
    sys.exit(
        main(
            doc=__doc__,
            script="observability.py",
            variants=VARIANTS,
            baseline="off",
            targets=[
                ("t0", 0.03), ("log", 0.10), ("nt0", 0.03, "noff"), ("nlog", 0.10, "noff"),
            ],
            begin_mark="<!-- bench:observability:begin -->",
            end_mark="<!-- bench:observability:end -->",
            epilogue=lines_written,
        )
    )
