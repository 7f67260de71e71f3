"""Controllers of the example Greeter service: business code only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from microframe.core.context import RequestContext

from example.errors import NothingToGreet
from example.generate.hello_pb2 import HelloReply, HelloRequest


async def say_hello(ctx: RequestContext, request: HelloRequest) -> HelloReply:
    """Greet one name."""
    if request.delay_ms:
        await asyncio.sleep(request.delay_ms / 1000)
    return HelloReply(message=f"Hello, {request.name or 'world'}!")


async def lots_of_replies(ctx: RequestContext, request: HelloRequest) -> AsyncIterator[HelloReply]:
    """Greet one name ``count`` times (3 by default; the proto's rule caps it at 1000)."""
    for i in range(request.count or 3):
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        yield HelloReply(message=f"Hello #{i + 1}, {request.name or 'world'}!")


async def lots_of_greetings(ctx: RequestContext, requests: AsyncIterator[HelloRequest]) -> HelloReply:
    """Greet every name received, in one reply."""
    names = [request.name async for request in requests]
    ctx.add_field("names", len(names))
    if not names:
        raise NothingToGreet("the request stream carried no name")
    return HelloReply(message=f"Hello, {', '.join(names)}!")


async def bidi_hello(ctx: RequestContext, requests: AsyncIterator[HelloRequest]) -> AsyncIterator[HelloReply]:
    """Greet every name as it arrives."""
    async for request in requests:
        yield HelloReply(message=f"Hello, {request.name or 'world'}!")
