#!/usr/bin/env python
"""What the validation middleware costs the example service, side by side with h2load.

The example's HelloRequest carries two rules (``delay_ms`` and ``count`` at most 60000 and
1000), both compiled checks (docs/topics/validation.md). One run measures, in interleaved
rounds (``bench/harness``, as ``bench/run.py``: same h2load load, same checks that every call
really succeeded and was counted):

    b      bare grpc.aio servicer, uvloop (the reference)
    nov    example service, default stack on grpc.aio, ValidationMiddleware taken out
    val    ... the default stack, ValidationMiddleware in
    nnov, nval   the same two on the native transport

Target: the validation middleware costs <= 5 % QPS, ``val`` against ``nov`` (and ``nval``
against ``nnov``).

    python bench/validation.py --quick      # a smoke run
    python bench/validation.py --write      # full run, written to docs/performance.md
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from harness.variants import main

#: Calls per in-process measurement, and measurements (the best is kept).
CALLS, REPEATS = 50_000, 7


def in_process(workdir: Path, configs: dict) -> str:
    """The middleware's own cost per call, without the network: the chain of SayHello with and
    without ValidationMiddleware around a controller that answers at once, the example's
    request, best of several runs. What h2load sees is this plus the round-to-round spread."""
    import os

    import microframe
    from microframe.core.middleware import build_chain
    from microframe.core.router import load_routes

    from example.generate.hello_pb2 import HelloRequest

    os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "example.settings")
    microframe.setup()
    route = next(r for r in load_routes("example.app.router") if r.method == "SayHello")

    async def answer(ctx: object, request: object) -> object:
        return request

    with_it, _ = build_chain(
        route, answer, ["microframe.contrib.validation.middleware.ValidationMiddleware"]
    )
    without, _ = build_chain(route, answer, [])
    request = HelloRequest(name="world")

    async def per_call(handler) -> float:
        started = time.perf_counter()
        for _ in range(CALLS):
            await handler(None, request)
        return (time.perf_counter() - started) / CALLS * 1e6

    async def measure() -> tuple[float, float]:
        best_with = best_without = float("inf")
        for _ in range(REPEATS):
            best_without = min(best_without, await per_call(without))
            best_with = min(best_with, await per_call(with_it))
        return best_with, best_without

    cost_with, cost_without = asyncio.run(measure())
    return (
        f"\nIn process, without the network (best of {REPEATS} runs of {CALLS} calls): the chain "
        f"of SayHello costs {cost_without:.2f} µs a call without ValidationMiddleware and "
        f"{cost_with:.2f} µs with it: the middleware and the request's two rules cost "
        f"{cost_with - cost_without:.2f} µs a call.\n"
    )

WITHOUT = (
    "from microframe.conf import global_settings as _defaults\n"
    "MIDDLEWARE = [m for m in _defaults.MIDDLEWARE if not m.endswith('.ValidationMiddleware')]\n"
)
GRPC_AIO = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "grpc.aio"}\n'
NATIVE = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "native"}\n'
VARIANTS = {
    "nov": ("default stack without ValidationMiddleware", GRPC_AIO + WITHOUT),
    "val": ("default stack (ValidationMiddleware in)", GRPC_AIO),
    "nnov": ("default stack without ValidationMiddleware, native transport", NATIVE + WITHOUT),
    "nval": ("default stack (ValidationMiddleware in), native transport", NATIVE),
}

if __name__ == "__main__":
    sys.exit(
        main(
            doc=__doc__,
            script="validation.py",
            variants=VARIANTS,
            baseline="nov",
            targets=[("val", 0.05), ("nval", 0.05, "nnov")],
            begin_mark="<!-- bench:validation:begin -->",
            end_mark="<!-- bench:validation:end -->",
            epilogue=in_process,
        )
    )
