"""Controllers of grpc.testing.TestService (src/proto/grpc/testing/test.proto), as the interop
test descriptions of gRPC ask a test server to behave: payloads of the sizes asked for, the
status asked for in ``response_status``, and the metadata of ``x-grpc-test-echo-initial`` and
``x-grpc-test-echo-trailing-bin`` echoed back as initial and trailing metadata."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from microframe.core.context import RequestContext
from microframe.core.exceptions import error_for

from interop.generate.src.proto.grpc.testing import empty_pb2, messages_pb2

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"

_CODES = {code.value[0]: code for code in grpc.StatusCode}

Request = messages_pb2.SimpleRequest | messages_pb2.StreamingOutputCallRequest


def _payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


def _trailers(ctx: RequestContext) -> tuple[tuple[str, str | bytes], ...]:
    value = ctx.metadata.get(ECHO_TRAILING)
    return () if value is None else ((ECHO_TRAILING, value),)


async def _echo(ctx: RequestContext) -> None:
    """Send the echoed initial metadata, and set the echoed trailer for a call that ends OK
    (one that fails carries it on its error)."""
    value = ctx.metadata.get(ECHO_INITIAL)
    if value is not None:
        await ctx.grpc.send_initial_metadata(((ECHO_INITIAL, value),))
    trailers = _trailers(ctx)
    if trailers:
        ctx.grpc.set_trailing_metadata(trailers)


def _check_status(ctx: RequestContext, request: Request) -> None:
    """Fail the call with ``response_status`` when the request asks for a code other than OK."""
    if request.HasField("response_status") and request.response_status.code != 0:
        status = request.response_status
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        raise error_for(code, status.message, trailers=_trailers(ctx))


async def empty_call(ctx: RequestContext, request: empty_pb2.Empty) -> empty_pb2.Empty:
    """One empty request, one empty reply."""
    return empty_pb2.Empty()


async def unary_call(
    ctx: RequestContext, request: messages_pb2.SimpleRequest
) -> messages_pb2.SimpleResponse:
    """A payload of ``response_size`` zero bytes, or the status asked for."""
    await _echo(ctx)
    _check_status(ctx, request)
    return messages_pb2.SimpleResponse(payload=_payload(request.response_size))


async def _responses(
    ctx: RequestContext, request: messages_pb2.StreamingOutputCallRequest
) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
    """The replies one request asks for, each ``interval_us`` after the one before."""
    _check_status(ctx, request)
    for parameters in request.response_parameters:
        if parameters.interval_us:
            await asyncio.sleep(parameters.interval_us / 1e6)
        yield messages_pb2.StreamingOutputCallResponse(payload=_payload(parameters.size))


async def streaming_output_call(
    ctx: RequestContext, request: messages_pb2.StreamingOutputCallRequest
) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
    """One reply of each size of ``response_parameters``."""
    async for response in _responses(ctx, request):
        yield response


async def streaming_input_call(
    ctx: RequestContext, requests: AsyncIterator[messages_pb2.StreamingInputCallRequest]
) -> messages_pb2.StreamingInputCallResponse:
    """The total size of the payloads received."""
    total = 0
    async for request in requests:
        total += len(request.payload.body)
    return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)


async def full_duplex_call(
    ctx: RequestContext, requests: AsyncIterator[messages_pb2.StreamingOutputCallRequest]
) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
    """The replies of each request as soon as it arrives."""
    await _echo(ctx)
    async for request in requests:
        async for response in _responses(ctx, request):
            yield response


async def half_duplex_call(
    ctx: RequestContext, requests: AsyncIterator[messages_pb2.StreamingOutputCallRequest]
) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
    """The replies of every request, once the client has sent them all."""
    received = [request async for request in requests]
    for request in received:
        async for response in _responses(ctx, request):
            yield response
