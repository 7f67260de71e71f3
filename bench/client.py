#!/usr/bin/env python
"""The client library's cost per call: the full client chain against a bare grpc.aio stub.

One example server (``manage.py runserver``, registered in a private file registry) answers
both. In this process, interleaved rounds make the same number of ``SayHello`` calls, the same
number in flight, once through a bare ``grpc.aio`` stub on one channel and once through
``GreeterClient`` with the default client chain (prepare, access log (off), metrics, circuit
breaker, discovery, retry, balancer). The figure is the CPU time of this process per call
(``time.process_time``: every thread, grpc's included), and the ratio of the two.

    python bench/client.py                 # printed
    python bench/client.py --write         # ... and written to docs/performance.md

Target (issue "Client library"): the full chain costs at most 15 % more CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness.report import write_block
from harness.servers import Config, running, wait_for

BEGIN_MARK = "<!-- bench:client:begin -->"
END_MARK = "<!-- bench:client:end -->"


async def drive(call: Callable[[], Awaitable[None]], calls: int, concurrency: int) -> float:
    """Make ``calls`` calls, ``concurrency`` at a time; return the CPU seconds per call."""
    per_task = calls // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    cpu = time.process_time()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return (time.process_time() - cpu) / (per_task * concurrency)


async def measure(
    address: str, registry_dir: str, rounds: int, calls: int, concurrency: int
) -> tuple[list[float], list[float]]:
    """Interleaved rounds of the bare stub and of the client; their CPU seconds per call."""
    import grpc

    from microframe.contrib.registry.file import FileRegistry
    from microframe.discovery.cache import DiscoveryCache

    from example.generate import hello_pb2, hello_pb2_grpc
    from example.generate.hello_client import GreeterClient

    request = hello_pb2.HelloRequest(name="world")
    channel = grpc.aio.insecure_channel(address)
    stub = hello_pb2_grpc.GreeterStub(channel)
    cache = DiscoveryCache(FileRegistry(registry_dir), Path(registry_dir) / "cache")
    client = GreeterClient("hello", discovery=cache)

    async def bare() -> None:
        reply = await stub.SayHello(request, timeout=5)
        assert reply.message == "Hello, world!"

    async def framework() -> None:
        reply = await client.SayHello(request)
        assert reply.message == "Hello, world!"

    await drive(bare, 2000, concurrency)  # warm up both: connections, caches
    await drive(framework, 2000, concurrency)
    bare_cpu: list[float] = []
    framework_cpu: list[float] = []
    for n in range(rounds):
        first, second = (bare, framework) if n % 2 == 0 else (framework, bare)
        a = await drive(first, calls, concurrency)
        b = await drive(second, calls, concurrency)
        (bare_cpu if first is bare else framework_cpu).append(a)
        (framework_cpu if first is bare else bare_cpu).append(b)
    await channel.close()
    await cache.close()
    return bare_cpu, framework_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    example = Config("c", "example, default settings", "runserver")
    with (
        tempfile.TemporaryDirectory(prefix="bench-client-") as tmp,
        running(example, Path(tmp), env={"MICROFRAME_REGISTRY_DIR": tmp}) as server,
    ):
        if not wait_for(lambda: any(Path(tmp, "hello").glob("*.json")), 30, server.proc):
            raise SystemExit("the example server did not register")
        from microframe.conf import settings

        settings.configure()
        bare, framework = asyncio.run(
            measure(f"127.0.0.1:{server.port}", tmp, args.rounds, args.calls, args.concurrency)
        )
    b, f = statistics.median(bare), statistics.median(framework)
    ratios = [y / x for x, y in zip(bare, framework, strict=True)]

    def per_round(seconds: list[float]) -> str:
        return ", ".join(f"{x * 1e6:.0f}" for x in seconds)

    block = (
        f"`python bench/client.py` ({time.strftime('%Y-%m-%d')}; {args.rounds} interleaved "
        f"rounds of {args.calls} calls, {args.concurrency} in flight, default asyncio loop; CPU "
        "of the calling process per call, all its threads):\n\n"
        "| client | CPU µs per call (median) | per round |\n|---|---:|---|\n"
        f"| bare grpc.aio stub, one channel | {b * 1e6:.0f} | {per_round(bare)} |\n"
        f"| `GreeterClient`, default client chain | {f * 1e6:.0f} | {per_round(framework)} |\n\n"
        f"Ratio: {f / b:.2f} of the medians, {statistics.median(ratios):.2f} as the median of the "
        f"per-round ratios (target <= 1.15: **{'met' if f / b <= 1.15 else 'missed'}**).\n"
    )
    print(block)
    if args.write:
        write_block(block, BEGIN_MARK, END_MARK)


if __name__ == "__main__":
    main()
