# Typed client of helloworld.Greeter (idl/hello.proto), in the shape genproto generates.
"""``GreeterClient``: call helloworld.Greeter by the registered name of its service."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from microframe.client import ServiceClient

from . import hello_pb2


class GreeterClient(ServiceClient):
    """``await GreeterClient("hello").SayHello(hello_pb2.HelloRequest(name="Ada"))``."""

    grpc_service = "helloworld.Greeter"

    async def SayHello(self, request: hello_pb2.HelloRequest, *, timeout: float | None = None, metadata: Any = None) -> hello_pb2.HelloReply:
        return await self.client.unary(self._path("SayHello"), request, hello_pb2.HelloReply, timeout=timeout, metadata=metadata)

    def LotsOfReplies(self, request: hello_pb2.HelloRequest, *, timeout: float | None = None, metadata: Any = None) -> AsyncIterator[hello_pb2.HelloReply]:
        return self.client.unary_stream(self._path("LotsOfReplies"), request, hello_pb2.HelloReply, timeout=timeout, metadata=metadata)

    async def LotsOfGreetings(self, requests: Iterable[hello_pb2.HelloRequest] | AsyncIterable[hello_pb2.HelloRequest], *, timeout: float | None = None, metadata: Any = None) -> hello_pb2.HelloReply:
        return await self.client.stream_unary(self._path("LotsOfGreetings"), requests, hello_pb2.HelloReply, timeout=timeout, metadata=metadata)

    def BidiHello(self, requests: Iterable[hello_pb2.HelloRequest] | AsyncIterable[hello_pb2.HelloRequest], *, timeout: float | None = None, metadata: Any = None) -> AsyncIterator[hello_pb2.HelloReply]:
        return self.client.stream_stream(self._path("BidiHello"), requests, hello_pb2.HelloReply, timeout=timeout, metadata=metadata)
