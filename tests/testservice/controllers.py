"""Controllers whose behaviour the request's name selects.

``remaining``: the seconds left before the call's deadline; ``peer``: the process id and the
caller's address; ``relay:<svc>,<svc>...[=>NAME]``: call the next service with the client library (the last
one is asked NAME, default ``remaining``);
``discover:<service>``: the addresses of that service's instances, found through the registry;
``raise``: an unexpected exception; ``wrongtype``: a reply of the wrong type; ``notfound``: a
business error; ``pid``: the serving process id; ``trace``: the call's trace id; ``setting``:
the GREETING setting; ``metadata:<key>``: the repr of that request metadata value; ``identity``: who
called (``ctx.identity``); ``fields``: two access-log fields added, the trace id answered; ``big:<n>``: a reply of n characters; ``burn:<ms>``: that much CPU work, in 1 ms slices with 2 ms waits between; anything else: a greeting. ``delay_ms`` makes the call take that long; ``cancelled:<path>``: take ``delay_ms`` and
write ``cancelled`` to <path> if cancelled meanwhile (``bidi_hello`` too, after a first reply).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from microframe import NotFound
from microframe.conf import settings

from example.generate.hello_pb2 import HelloReply, HelloRequest

#: Where burnthread's CPU work runs: one thread, as CPU-bound Python should (more threads than one
#: only share the GIL, and take it from the event loop, whatever the machine's cores).
CPU_WORKER = ThreadPoolExecutor(1, thread_name_prefix="cpu")
#: How many burnthread calls are in the controller (waiting for CPU_WORKER or running on it).
BURNING = [0]


def _note_cancellation(path: str) -> None:
    """Write ``cancelled`` to ``path``: the test reads it to know the controller was stopped."""
    with open(path, "w") as file:
        file.write("cancelled")


async def say_hello(ctx, request: HelloRequest):
    if request.name.startswith("cancelled:"):
        # cancelled:<path>: take delay_ms; a cancellation meanwhile is noted in <path>.
        try:
            await asyncio.sleep(request.delay_ms / 1000)
        except asyncio.CancelledError:
            _note_cancellation(request.name[len("cancelled:"):])
            raise
        return HelloReply(message="not cancelled")
    if request.delay_ms:
        ctx.logger.info("sleeping %d ms", request.delay_ms)
        await asyncio.sleep(request.delay_ms / 1000)
    name = request.name
    if name == "raise":
        raise ValueError("secret internal detail")
    if name == "wrongtype":
        return "a string, not a HelloReply"
    if name == "unavailable":
        from microframe.core.exceptions import Unavailable

        raise Unavailable("down for the test")
    if name == "notfound":
        raise NotFound("no such greeting", trailers={"x-reason": "missing"})
    if name == "pid":
        return HelloReply(message=str(os.getpid()))
    if name.startswith("big:"):
        return HelloReply(message="b" * int(name[4:]))
    if name == "remaining":
        return HelloReply(message=f"{ctx.time_remaining():.3f}")
    if name == "peer":
        return HelloReply(message=f"{os.getpid()} {ctx.peer}")
    if name.startswith("relay:"):
        # relay:<service>[,<service>...][=>NAME]: call the first service with the rest of the
        # list (ending with NAME, default "remaining"), through the client library, telling it
        # who called (x-md-local-caller: one hop); answer what it answered.
        from example.generate.hello_client import GreeterClient

        chain, _, final = name[len("relay:"):].partition("=>")
        first, _, rest = chain.partition(",")
        final = final or "remaining"
        onward = f"relay:{rest}=>{final}" if rest else final
        ctx.metadata_out["x-md-local-caller"] = settings.SERVICE_NAME
        reply = await GreeterClient(first).SayHello(HelloRequest(name=onward))
        return HelloReply(message=reply.message)
    if name.startswith("discover:"):
        # Find another service through the registry, from inside a serving process.
        from microframe.discovery.cache import get_discovery_cache

        found = await get_discovery_cache().instances(name.split(":", 1)[1])
        return HelloReply(message=",".join(sorted(i.address for i in found)))
    if name == "trace":
        ctx.logger.info("tracing this call")
        if ctx.span is not None:  # the opentracing API, whatever the backend
            ctx.span.set_tag("greeting.kind", "trace")
            ctx.span.log_kv({"event": "greeted", "name": name})
        return HelloReply(message=ctx.trace_id)
    if name.startswith("burnthread:"):
        # burnthread:<ms>: that much CPU work in a worker thread, awaited (as CPU-bound work
        # should be run): the event loop stays free, the calls wait for the thread in the chain.
        # Answers the time the call spent in the server and how many calls it found there.
        def burn() -> None:
            until = time.perf_counter() + int(name[11:]) / 1000
            while time.perf_counter() < until:
                pass

        BURNING[0] += 1
        found = BURNING[0]  # the calls in the controller when this one came in, itself included
        try:
            await asyncio.get_running_loop().run_in_executor(CPU_WORKER, burn)
        finally:
            BURNING[0] -= 1
        return HelloReply(message=f"{ctx.elapsed():.6f} {found}")
    if name.startswith("burn:"):
        # burn:<ms>: that much CPU work in 1 ms slices, each followed by 2 ms of waiting (as a
        # handler computing between database calls does): concurrent calls share the CPU.
        for _ in range(int(name[5:])):
            until = time.perf_counter() + 0.001
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0.002)
        return HelloReply(message="burnt")
    if name == "fields":
        ctx.add_field("user_id", 42)
        ctx.add_field("cache", "hit")
        return HelloReply(message=ctx.trace_id)
    if name == "setting":
        return HelloReply(message=str(settings.GREETING))
    if name == "identity":
        return HelloReply(message=str(ctx.identity))
    if name == "steering":
        return HelloReply(message=f"{os.getpid()} {ctx.color} {ctx.stress}")
    if name.startswith("metadata:"):
        value = ctx.metadata.get(name[9:])
        return HelloReply(message=repr(value))
    return HelloReply(message=f"{settings.GREETING}, {name}!")


def lots_of_replies(ctx, request: HelloRequest):
    """A plain generator: runs in the worker thread pool."""
    if request.name == "raise":
        raise RuntimeError("boom before the first reply")
    for i in range(request.count or 3):
        if request.delay_ms:
            time.sleep(request.delay_ms / 1000)
        if request.name == "wrongtype" and i == 1:
            yield 42
        yield HelloReply(message=f"{i}:{threading.current_thread().name}")


def lots_of_greetings(ctx, requests):
    """A plain function reading a client stream from a worker thread."""
    names = [r.name for r in requests]
    return HelloReply(message=",".join(names))


async def bidi_hello(ctx, requests):
    async for request in requests:
        if request.name == "raise":
            raise ValueError("bidi failure")
        if request.name.startswith("cancelled:"):  # as say_hello's, after one reply
            yield HelloReply(message="first")
            try:
                await asyncio.sleep(request.delay_ms / 1000)
            except asyncio.CancelledError:
                _note_cancellation(request.name[len("cancelled:"):])
                raise
        yield HelloReply(message=request.name.upper())
