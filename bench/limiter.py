#!/usr/bin/env python
"""What the rate limiter costs per call: each local backend and Redis, against no limiter.

In interleaved rounds (``bench/harness``, as ``bench/run.py``), the example service with:

    none     LIMITER["ENABLED"] = False
    token    the default: TokenBucket(rate=50000, burst=50000)
    leaky    LeakyBucket(rate=1000000)
    fixed    FixedWindowCounter(limit=1000000, window=1)
    sliding  SlidingWindow(limit=1000000, window=1)
    redis    RedisLimiter(rate=1000000) on a redis-server this script starts on a free port

every limit far above what the load reaches: the figure is the cost of deciding, not of
refusing. Target (issue "Rate limiting"): a local limiter costs <= 2 % QPS.

    python bench/limiter.py --quick
    python bench/limiter.py --write     # full run, written to docs/performance.md
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from harness.servers import accepts_connections, wait_for
from harness.variants import main

BACKENDS = "microframe.contrib.limiter.backends"
VARIANTS = {
    "none": ("no limiter", 'LIMITER = {"ENABLED": False}\n'),
    "token": ("TokenBucket (the default)", "\n"),
    "leaky": (
        "LeakyBucket",
        f'LIMITER = {{"BACKEND": "{BACKENDS}.LeakyBucket", "OPTIONS": {{"rate": 1000000}}}}\n',
    ),
    "fixed": (
        "FixedWindowCounter",
        f'LIMITER = {{"BACKEND": "{BACKENDS}.FixedWindowCounter", '
        '"OPTIONS": {"limit": 1000000}}\n',
    ),
    "sliding": (
        "SlidingWindow",
        f'LIMITER = {{"BACKEND": "{BACKENDS}.SlidingWindow", "OPTIONS": {{"limit": 1000000}}}}\n',
    ),
    "redis": (
        "RedisLimiter (local redis-server)",
        'LIMITER = {"BACKEND": "microframe.contrib.limiter.redis.RedisLimiter", '
        '"OPTIONS": {"rate": 1000000, "burst": 1000000, '
        '"url": "redis://127.0.0.1:$redis_port/0"}}\n',
    ),
}


def start_redis(workdir: Path) -> dict[str, object]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    from microframe.test import free_port  # once harness has put this checkout on sys.path

    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for(lambda: accepts_connections(port), 10, proc):
        proc.kill()
        proc.wait(10)
        raise SystemExit("redis-server did not start")

    def stop() -> None:
        proc.kill()
        proc.wait(10)

    return {"redis_port": port, "cleanup": stop}


if __name__ == "__main__":
    sys.exit(
        main(
            doc=__doc__,
            script="limiter.py",
            variants=VARIANTS,
            baseline="none",
            targets=[(k, 0.02) for k in ("token", "leaky", "fixed", "sliding")],
            begin_mark="<!-- bench:limiter:begin -->",
            end_mark="<!-- bench:limiter:end -->",
            setup=start_redis,
        )
    )
