"""The server runtime over real sockets: RPC kinds, health, reflection, errors, limits."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import struct
import subprocess

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import require_binary
from support.polling import wait_until

Req = hello_pb2.HelloRequest


def stub(address: str) -> tuple[grpc.Channel, hello_pb2_grpc.GreeterStub]:
    channel = grpc.insecure_channel(address)
    return channel, hello_pb2_grpc.GreeterStub(channel)


def test_every_rpc_kind(example_server):
    channel, greeter = stub(example_server.address)
    with channel:
        assert greeter.SayHello(Req(name="Ada"), timeout=5).message == "Hello, Ada!"
        replies = [r.message for r in greeter.LotsOfReplies(Req(name="Bo", count=4), timeout=5)]
        assert replies == [f"Hello #{i}, Bo!" for i in range(1, 5)]
        reply = greeter.LotsOfGreetings(iter([Req(name="a"), Req(name="b"), Req(name="c")]), timeout=5)
        assert reply.message == "Hello, a, b, c!"
        answers = [r.message for r in greeter.BidiHello(iter([Req(name="x"), Req(name="y")]), timeout=5)]
        assert answers == ["Hello, x!", "Hello, y!"]


def test_business_error_keeps_code_message_and_trailers(test_server):
    channel, greeter = stub(test_server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        greeter.SayHello(Req(name="notfound"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such greeting"
    assert ("x-reason", "missing") in info.value.trailing_metadata()


def test_health_and_reflection(example_server):
    with grpc.insecure_channel(example_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "helloworld.Greeter"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="nope.Nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="helloworld.Greeter"),
        ]
        listed, found = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert {"helloworld.Greeter", "grpc.health.v1.Health"} <= names
        from google.protobuf import descriptor_pb2

        proto = descriptor_pb2.FileDescriptorProto.FromString(
            found.file_descriptor_response.file_descriptor_proto[0]
        )
        assert proto.package == "helloworld"
        assert [m.name for m in proto.service[0].method] == [
            "SayHello", "LotsOfReplies", "LotsOfGreetings", "BidiHello"
        ]
        # Every service reflection lists is really served (answers something other than
        # UNIMPLEMENTED to a call on it), and its descriptor can be fetched.
        for name in sorted(names):
            lookup = reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
            (reply,) = reflection.ServerReflectionInfo(iter([lookup]), timeout=5)
            assert reply.HasField("file_descriptor_response"), (name, reply)
            method = descriptor_pb2.FileDescriptorProto.FromString(
                reply.file_descriptor_response.file_descriptor_proto[0]
            )
            service = next(s for s in method.service if f"{method.package}.{s.name}" == name)
            call = channel.unary_unary(f"/{name}/{service.method[0].name}")
            try:
                call(b"", timeout=5)
            except grpc.RpcError as err:
                assert err.code() != grpc.StatusCode.UNIMPLEMENTED, name


def test_unknown_exception_is_internal_without_details(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            greeter.SayHello(Req(name="raise"), metadata=[("x-request-id", "req-raise-1")], timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert info.value.details() == "internal error"
        assert "secret" not in (info.value.debug_error_string() or "")
        # The server logged the traceback with the caller's request id, and keeps serving.
        def error_line() -> str | None:
            lines = test_server.output.splitlines()
            return next((line for line in lines if "req-raise-1" in line and " ERROR " in line), None)

        line = wait_until(error_line, 5, "the error log line")
        assert "ValueError" in line
        assert "secret internal detail" in test_server.output
        assert greeter.SayHello(Req(name="ok"), timeout=5).message == "Hello, ok!"


def test_streaming_errors_are_internal(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            list(greeter.LotsOfReplies(Req(name="raise"), timeout=5))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError) as info:
            list(greeter.BidiHello(iter([Req(name="a"), Req(name="raise")]), timeout=5))
        assert info.value.code() == grpc.StatusCode.INTERNAL


def test_wrong_reply_type_is_internal(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            greeter.SayHello(Req(name="wrongtype"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        received = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in greeter.LotsOfReplies(Req(name="wrongtype", count=3), timeout=5):
                received.append(reply.message)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert len(received) == 1
        # Logs are written by a writer thread: wait for the line.
        wait_until(lambda: "expected helloworld.HelloReply" in test_server.output, 5, "the log line")
        assert greeter.SayHello(Req(name="still"), timeout=5).message == "Hello, still!"


def test_sync_controllers_run_in_worker_threads(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        replies = [r.message for r in greeter.LotsOfReplies(Req(name="t", count=3), timeout=5)]
        assert [r.split(":")[0] for r in replies] == ["0", "1", "2"]
        assert all(r.split(":")[1].startswith("microframe-controller") for r in replies)
        names = [Req(name=str(i)) for i in range(50)]
        assert greeter.LotsOfGreetings(iter(names), timeout=5).message == ",".join(map(str, range(50)))


def test_trace_id_from_metadata_or_generated(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        given = greeter.SayHello(Req(name="trace"), metadata=[("trace_id", "abc123")], timeout=5)
        assert given.message == "abc123"
        generated = greeter.SayHello(Req(name="trace"), timeout=5).message
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        wait_until(
            lambda: any("abc123" in line and "tracing this call" in line for line in test_server.output.splitlines()),
            5, "the request log line",
        )


def test_garbage_message_is_invalid_argument(test_server):
    with grpc.insecure_channel(test_server.address) as channel:
        raw = channel.unary_unary("/helloworld.Greeter/SayHello")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff\xff", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A truncated protobuf message (a length-delimited field cut short).
        truncated = Req(name="abcdefgh").SerializeToString()[:-3]
        with pytest.raises(grpc.RpcError) as info:
            raw(truncated, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        raw_stream = channel.stream_unary("/helloworld.Greeter/LotsOfGreetings")
        with pytest.raises(grpc.RpcError) as info:
            raw_stream(iter([Req(name="ok").SerializeToString(), b"\xff\xff"]), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert hello_pb2_grpc.GreeterStub(channel).SayHello(Req(name="x"), timeout=5).message == "Hello, x!"
    wait_until(lambda: "malformed helloworld.HelloRequest" in test_server.output, 5, "the log line")


def _nghttp_grpc_status(address: str, body: bytes, tmp_path) -> tuple[str | None, str]:
    nghttp = require_binary("nghttp")
    data = tmp_path / "frame.bin"
    data.write_bytes(body)
    out = subprocess.run(
        [nghttp, "-v", "-t", "10", "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-d", str(data), f"http://{address}/helloworld.Greeter/SayHello"],
        capture_output=True, text=True, timeout=20,
    )
    match = re.search(r"grpc-status: (\d+)", out.stdout)
    return (match.group(1) if match else None), out.stdout + out.stderr


def test_truncated_and_garbage_frames_from_a_raw_http2_client(test_server, tmp_path):
    """grpc.aio hands a truncated request to microframe, which answers and logs it; the native
    transport answers a truncated or missing request message itself, INTERNAL with its reason
    (docs/topics/transport.md), before the application sees the call."""
    native = test_server.transport == "native"
    # The gRPC length prefix announces 100 bytes; only 5 follow before the stream ends.
    truncated_frame = b"\x00" + struct.pack(">I", 100) + b"\x0a\x03abc"
    status, out = _nghttp_grpc_status(test_server.address, truncated_frame, tmp_path)
    assert status is not None, out
    assert grpc.StatusCode.UNKNOWN.value[0] != int(status), out
    assert int(status) in (grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.INTERNAL.value[0]), out
    if native:
        assert "grpc-message: Unexpected%20EOF%20decoding%20stream." in out, out
    else:
        wait_until(lambda: "ended before one complete message arrived" in test_server.output, 5, "the log line")
    # No message at all on a unary method: the same answer, at once.
    status, out = _nghttp_grpc_status(test_server.address, b"", tmp_path)
    missing = grpc.StatusCode.INTERNAL if native else grpc.StatusCode.INVALID_ARGUMENT
    assert status == str(missing.value[0]), out
    # A well-framed message of garbage bytes.
    garbage = b"\xde\xad\xbe\xef\xff\xff"
    status, out = _nghttp_grpc_status(test_server.address, b"\x00" + struct.pack(">I", len(garbage)) + garbage, tmp_path)
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), out
    # Still serving.
    valid = Req(name="after").SerializeToString()
    status, out = _nghttp_grpc_status(test_server.address, b"\x00" + struct.pack(">I", len(valid)) + valid, tmp_path)
    assert status == "0", out


def test_oversized_message_is_resource_exhausted(test_server):
    channel, greeter = stub(test_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            greeter.SayHello(Req(name="x" * (70 * 1024)), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert greeter.SayHello(Req(name="y" * 1024), timeout=5).message.startswith("Hello, yyy")


def test_oversized_reply_is_resource_exhausted_and_reflection_still_answers(test_server):
    """A routed method's reply is held to MAX_MESSAGE_BYTES (64 KiB here); reflection answers a
    proto with its imports (protovalidate's rules: 68 KB) in one message above that limit."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel, greeter = stub(test_server.address)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            greeter.SayHello(Req(name="big:70000"), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith("Sent message larger than max (7000")
        assert info.value.details().endswith(" vs. 65536)")
        assert len(greeter.SayHello(Req(name="big:60000"), timeout=5).message) == 60000
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="helloworld.Greeter")
        (reply,) = reflection.ServerReflectionInfo(iter([request]), timeout=5)
        files = reply.file_descriptor_response.file_descriptor_proto
        assert sum(len(f) for f in files) > 65536 and len(files) >= 2


def test_burst_on_one_connection_is_answered_never_cancelled(test_server):
    """2,000 concurrent calls on one channel: served or refused RESOURCE_EXHAUSTED, none CANCELLED.

    The connection may hold a quarter of the test service's 200 call slots at once
    (MAX_CALLS_PER_CONNECTION's default): the rest of the burst is refused, the slots of other
    connections are left alone (tests/core/test_hostile.py attacks that).
    """

    async def burst() -> collections.Counter[str]:
        async with grpc.aio.insecure_channel(test_server.address) as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)

            async def one() -> str:
                try:
                    await greeter.SayHello(Req(name="b", delay_ms=200), timeout=30)
                    return "OK"
                except grpc.aio.AioRpcError as err:
                    return err.code().name

            return collections.Counter(await asyncio.gather(*[one() for _ in range(2000)]))

    counts = asyncio.run(burst())
    assert set(counts) <= {"OK", "RESOURCE_EXHAUSTED"}, counts
    assert counts["OK"] >= 50, counts  # its share of the test service's MAX_CONCURRENT_RPCS
    assert counts["RESOURCE_EXHAUSTED"] > 0, counts
    channel, greeter = stub(test_server.address)
    with channel:
        assert greeter.SayHello(Req(name="after"), timeout=5).message == "Hello, after!"


def test_bare_grpc_aio_cancels_part_of_a_burst():
    """The behaviour the runtime fixes: grpc core's pending-call queue overflows silently."""

    async def run() -> collections.Counter[str]:
        class Greeter(hello_pb2_grpc.GreeterServicer):
            async def SayHello(self, request, context):
                await asyncio.sleep(0.05)
                return hello_pb2.HelloReply(message="hi")

        server = grpc.aio.server()
        hello_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                greeter = hello_pb2_grpc.GreeterStub(channel)

                async def one() -> str:
                    try:
                        await greeter.SayHello(Req(name="b"), timeout=30)
                        return "OK"
                    except grpc.aio.AioRpcError as err:
                        return err.code().name

                return collections.Counter(await asyncio.gather(*[one() for _ in range(4000)]))
        finally:
            await server.stop(0)

    counts = asyncio.run(run())
    assert counts["CANCELLED"] > 0, counts


# ---------------------------------------------------------------------------------------------
# One end of a call: every RPC kind is seen ending the same way by the metrics, the access log
# and an end-of-call observer (ctx.on_end, and request_failed for a request never read).

_ACCESS = "microframe.access"
_GREETER = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]
_KINDS = {  # method: grpc_type
    "SayHello": "unary",
    "LotsOfReplies": "server_stream",
    "LotsOfGreetings": "client_stream",
    "BidiHello": "bidi_stream",
}


class _Calls:
    """What the server saw of the calls of a test: the controllers entered, the ends observed
    (``ctx.on_end`` or ``request_failed``), the access lines written."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.ends: list[tuple[str, grpc.StatusCode]] = []
        self.lines: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def note(self) -> None:
        self.loop.call_soon_threadsafe(self.changed.set)

    async def until(self, predicate, what: str) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), 5)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


def _controllers(calls: _Calls):
    """One controller per RPC kind; the (first) request's name says how the call goes: ``ok``,
    ``error`` (NOT_FOUND, after one reply on a server stream), ``slow`` (never ends)."""
    from microframe import NotFound

    async def hang() -> None:
        calls.entered.set()
        await asyncio.Event().wait()

    async def say_hello(ctx, request):
        if request.name == "error":
            raise NotFound("no such greeting")
        if request.name == "slow":
            await hang()
        return hello_pb2.HelloReply(message="hi")

    async def lots_of_replies(ctx, request):
        yield hello_pb2.HelloReply(message="first")
        if request.name == "error":
            raise NotFound("no such greeting")
        if request.name == "slow":
            await hang()
        yield hello_pb2.HelloReply(message="second")

    async def lots_of_greetings(ctx, requests):
        async for request in requests:
            if request.name == "error":
                raise NotFound("no such greeting")
            if request.name == "slow":
                await hang()
        return hello_pb2.HelloReply(message="hi")

    async def bidi_hello(ctx, requests):
        async for request in requests:
            if request.name == "error":
                raise NotFound("no such greeting")
            if request.name == "slow":
                await hang()
            yield hello_pb2.HelloReply(message="hi")

    from microframe.core.router import rpc

    return [
        rpc(_GREETER, "SayHello", say_hello),
        rpc(_GREETER, "LotsOfReplies", lots_of_replies),
        rpc(_GREETER, "LotsOfGreetings", lots_of_greetings),
        rpc(_GREETER, "BidiHello", bidi_hello),
    ]


def _observer(calls: _Calls):
    """A middleware that records how every call ends, the way a battery would."""

    class EndObserver:
        def __init__(self, next, route):
            self.next = next

        async def __call__(self, ctx, request):
            ctx.on_end(lambda code, exc: self.ended(ctx, code))
            return await self.next(ctx, request)

        def request_failed(self, ctx, code, exc):
            self.ended(ctx, code)

        def ended(self, ctx, code):
            calls.ends.append((ctx.method, code))
            calls.note()

    return EndObserver


class _AccessLines(logging.Handler):
    def __init__(self, calls: _Calls) -> None:
        super().__init__(logging.INFO)
        self.calls = calls

    def emit(self, record: logging.LogRecord) -> None:
        self.calls.lines.append((record.getMessage().split()[0].rsplit("/", 1)[-1], record.code))
        self.calls.note()


def _handled(method: str, code: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"grpc_type": _KINDS[method], "grpc_service": "helloworld.Greeter",
              "grpc_method": method}
    started = REGISTRY.get_sample_value("grpc_server_started_total", labels) or 0.0
    handled = REGISTRY.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code})
    return started + 1000 * (handled or 0.0)  # both counters in one number


@contextlib.asynccontextmanager
async def _observed_server():
    from microframe.test import override_settings, serve

    calls = _Calls()
    middleware = [
        "microframe.contrib.metrics.middleware.MetricsMiddleware",
        "microframe.contrib.logging.middleware.AccessLogMiddleware",
        _observer(calls),
    ]
    logger = logging.getLogger(_ACCESS)
    level = logger.level
    lines = _AccessLines(calls)
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with override_settings(merge=True, ACCESS_LOG={"ENABLED": True}):
            async with serve(routes=_controllers(calls), middleware=middleware) as server:
                channel = grpc.aio.insecure_channel(server.address)
                try:
                    yield calls, channel
                finally:
                    await channel.close()
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


def _raw_call(channel: grpc.aio.Channel, method: str, payloads: list[bytes], timeout: float):
    """Call ``method`` with raw request bytes; return the call object (awaited or iterated by
    the caller)."""
    path = f"/helloworld.Greeter/{method}"
    kind = _KINDS[method]
    if kind == "unary":
        return channel.unary_unary(path)(payloads[0], timeout=timeout)
    if kind == "server_stream":
        return channel.unary_stream(path)(payloads[0], timeout=timeout)

    async def stream():
        for payload in payloads:
            yield payload

    if kind == "client_stream":
        return channel.stream_unary(path)(stream(), timeout=timeout)
    return channel.stream_stream(path)(stream(), timeout=timeout)


async def _finish(call) -> grpc.StatusCode:
    """Wait for the end of ``call`` (reading every reply of a stream); return its code."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    except asyncio.CancelledError:  # the call (not this task) was cancelled: grpc.aio says so
        assert call.cancelled()
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK


async def _ended_alike(calls: _Calls, method: str, name: str, server_code: str) -> None:
    """The call's one end, as the observer and the access log saw it, is ``server_code``."""
    await calls.until(lambda: calls.ends and calls.lines, f"the end of {method} {name}")
    assert calls.ends == [(method, grpc.StatusCode[server_code])], (method, name)
    assert calls.lines == [(method, server_code)], (method, name)
    calls.ends.clear()
    calls.lines.clear()


async def test_every_rpc_kind_ends_alike_for_every_observer():
    """Success, an error, a cancelled call and a deadline passed: for every RPC kind, the code
    the observer is handed once is the access line's and the one counted handled."""
    cases = {  # request name: (the client's code, the code the server observes)
        "ok": ("OK", "OK"),
        "error": ("NOT_FOUND", "NOT_FOUND"),
        "cancel": ("CANCELLED", "CANCELLED"),
        "deadline": ("DEADLINE_EXCEEDED", "CANCELLED"),
    }
    async with _observed_server() as (calls, channel):
        for method in _KINDS:
            for case, (client_code, server_code) in cases.items():
                name = {"cancel": "slow", "deadline": "slow"}.get(case, case)
                payload = Req(name=name).SerializeToString()
                before = _handled(method, server_code)
                calls.entered.clear()
                call = _raw_call(channel, method, [payload], 1.0 if case == "deadline" else 10)
                if case == "cancel":
                    waiting = asyncio.ensure_future(_finish(call))
                    await asyncio.wait_for(calls.entered.wait(), 5)
                    call.cancel()
                    code = await waiting
                else:
                    code = await _finish(call)
                assert code == grpc.StatusCode[client_code], (method, case)
                await _ended_alike(calls, method, case, server_code)
                assert _handled(method, server_code) == before + 1001, (method, case)


async def test_a_malformed_request_is_counted_alike_for_every_rpc_kind():
    """Parsed before the chain (unary requests) or in it (streams), a request that cannot be
    parsed is answered, counted started and handled, logged and observed the same way."""
    async with _observed_server() as (calls, channel):
        for method in _KINDS:
            before = _handled(method, "INVALID_ARGUMENT")
            code = await _finish(_raw_call(channel, method, [b"\xff\xff\xff\xff\xff"], 10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, method
            await _ended_alike(calls, method, "malformed", "INVALID_ARGUMENT")
            assert _handled(method, "INVALID_ARGUMENT") == before + 1001, method


async def test_the_server_runs_on_the_transport_it_is_given():
    """The transport is the runtime's one seam: the grpc server object, how each method is
    registered and how it listens come from it, and a call crosses it as on the default."""
    from microframe.core.router import load_routes
    from microframe.core.server import Server, ServerConfig
    from microframe.core.transport import GrpcAioTransport

    class Recording(GrpcAioTransport):
        name = "recording"

        def __init__(self) -> None:
            self.created = 0
            self.methods: list[str] = []
            self.addresses: list[str] = []

        def create(self, config):
            self.created += 1
            return super().create(config)

        def method_handler(self, route, chain, limits, observers):
            self.methods.append(route.full_method)
            return super().method_handler(route, chain, limits, observers)

        def listen(self, server, address, config):
            self.addresses.append(address)
            return super().listen(server, address, config)

    transport = Recording()
    routes = load_routes("example.app.router")
    server = Server(routes, config=ServerConfig(port=0), transport=transport)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await hello_pb2_grpc.GreeterStub(channel).SayHello(Req(name="T"), timeout=5)
    finally:
        await server.stop(0.5)
    assert reply.message == "Hello, T!"
    assert transport.created == 1 and transport.addresses == ["127.0.0.1:0"]
    assert sorted(transport.methods) == sorted(r.full_method for r in routes)
