#!/usr/bin/env python
"""Time the Python code a unary call runs in microframe, in process, without grpc or sockets.

    python bench/overhead.py [-n 200000]

Runs ``SayHello``'s path on the event loop with a stand-in for grpc's servicer context and
prints microseconds per call for:

- what a bare grpc.aio servicer's call costs in Python (parse the request, build the reply,
  serialize it; grpc's core does the parsing and serializing for a bare servicer, in C);
- microframe's method handler and controller wrapper, with ``MIDDLEWARE = []``;
- the same with the example's ``MIDDLEWARE`` (the default stack: the metrics middleware);
- each middleware of that stack alone (its cost over the empty chain);
- ``MIDDLEWARE = []`` again, the method capped by ``GRPC["METHOD_TIMEOUTS"]`` (what a cap
  costs a call; an uncapped method's path is the first one's).

``--multiprocess`` records the metrics as the workers of ``runserver --workers N`` do
(prometheus_client's multiprocess mode: every value in a memory-mapped file).

Compare with the server CPU per call ``bench/run.py`` reports (everything grpc does besides)
to see what share of a call the framework is.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import harness  # noqa: F401  (this checkout first on sys.path, before microframe is imported)

os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "example.settings")

from microframe.conf import settings  # noqa: E402
from microframe.core.handlers import controller_handler, grpc_method_handler  # noqa: E402
from microframe.core.middleware import build_chain  # noqa: E402
from microframe.core.router import Route, load_routes  # noqa: E402

from example.generate import hello_pb2  # noqa: E402

Call = Callable[[bytes, Any], Awaitable[Any]]


class StandInContext:
    """What a successful unary call of the example touches of grpc's servicer context: the
    request message it reads, and the caller's address (the key of the per-connection limits)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self) -> bytes:
        return self.raw

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        raise AssertionError(f"the call failed (trailers {metadata}): the figures would be wrong")


def variants() -> dict[str, Call]:
    """The handlers to time. The limiter's rate (50,000 calls/s by default) is lifted: the
    handler alone runs faster than that, and a refused call is not what is measured; the
    limiter is in the chain all the same and costs what it does at any rate."""
    limiter = dict(settings.LIMITER)
    limiter["OPTIONS"] = {**limiter.get("OPTIONS", {}), "rate": 1e12, "burst": 1e12}
    settings.LIMITER = limiter
    route = next(r for r in load_routes(settings.ROOT_ROUTER) if r.method == "SayHello")
    executor = ThreadPoolExecutor(1)
    request_class, reply_class = hello_pb2.HelloRequest, hello_pb2.HelloReply

    async def bare(requests: Any, context: Any) -> bytes:
        request = request_class.FromString(await context.read())
        return reply_class(message=f"Hello, {request.name or 'world'}!").SerializeToString()

    def framework(middleware: list[Any], route: Route = route) -> Call:
        chain, _ = build_chain(route, controller_handler(route, executor), middleware)
        # Methods with one request message are registered as request-streaming and read it
        # with context.read() (see grpc_method_handler).
        handler = grpc_method_handler(route, chain).stream_unary
        assert handler is not None
        return handler

    out: dict[str, Call] = {
        "bare servicer's Python work (parse, reply, serialize)": bare,
        "microframe, MIDDLEWARE = []": framework([]),
        "microframe, the example's MIDDLEWARE": framework(list(settings.MIDDLEWARE)),
    }
    if len(settings.MIDDLEWARE) > 1:
        for entry in settings.MIDDLEWARE:
            out[f"microframe, MIDDLEWARE = [{entry.rsplit('.', 1)[-1]}]"] = framework([entry])
    capped = dataclasses.replace(route, timeout=60.0)
    out["microframe, MIDDLEWARE = [], the method capped (METHOD_TIMEOUTS)"] = framework([], capped)
    return out


async def time_call(call: Call, n: int) -> float:
    raw = hello_pb2.HelloRequest(name="world").SerializeToString()
    context = StandInContext(raw)
    for _ in range(min(n, 5000)):
        await call(None, context)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            await call(None, context)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


async def run(n: int) -> None:
    results = {name: await time_call(call, n) for name, call in variants().items()}
    base = next(iter(results.values()))
    print(f"µs per call (best of 3 x {n}), and over the bare servicer's Python work:")
    for name, us in results.items():
        print(f"{us:8.2f}  {us - base:+7.2f}  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument(
        "--multiprocess",
        action="store_true",
        help="record the metrics as a --workers N worker does "
        "(prometheus_client multiprocess mode)",
    )
    args = parser.parse_args(argv)
    if args.multiprocess:
        if "prometheus_client" in sys.modules:
            raise SystemExit("prometheus_client was imported too early for --multiprocess")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="microframe-overhead-")
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(run(args.n))
        finally:
            if args.multiprocess:
                shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
