"""``GRPC["METHOD_TIMEOUTS"]``: how long a call of a method may run on the server.

Against real servers on both transports: the test service run with caps
(``testservice.capped_settings``: SayHello, LotsOfReplies and BidiHello 0.3 s, LotsOfGreetings
none), called with plain grpc clients that give no deadline of their own; and servers in the
test's event loop whose observers (metrics, access log, an end-of-call observer) are read
directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from example.generate import hello_pb2, hello_pb2_grpc
from support.polling import wait_until
from support.servers import ServerProcess

Req = hello_pb2.HelloRequest
CAP = 0.3
#: How late past its deadline a capped call may be answered (a loaded two-core machine).
MARGIN = 0.7


def cap_message(method: str, cap: float = CAP) -> str:
    return f'/helloworld.Greeter/{method} exceeded its {cap:g} s limit (GRPC["METHOD_TIMEOUTS"])'


@pytest.fixture(scope="module")
def capped_server(module_tmp: Path, transport: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        module_tmp, settings="testservice.capped_settings", transport=transport
    ).wait_serving()
    yield server
    server.kill()


@pytest.fixture
def stub(capped_server: ServerProcess) -> Iterator[hello_pb2_grpc.GreeterStub]:
    with grpc.insecure_channel(capped_server.address) as channel:
        yield hello_pb2_grpc.GreeterStub(channel)


def handled(server: ServerProcess, method: str, code: str) -> float:
    """``grpc_server_handled_total`` of ``method`` answered ``code``, scraped."""
    for line in server.metrics_text().splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and f'grpc_method="{method}"' in line
            and f'grpc_code="{code}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_capped_call_is_answered_deadline_exceeded_and_its_controller_cancelled(
    capped_server, stub, tmp_path
):
    marker = tmp_path / "cancelled"
    before = handled(capped_server, "SayHello", "DEADLINE_EXCEEDED")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        # No deadline from the caller; the controller would take 5 s.
        stub.SayHello(Req(name=f"cancelled:{marker}", delay_ms=5000))
    took = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == cap_message("SayHello")
    assert CAP <= took < CAP + MARGIN, took
    wait_until(marker.exists, 5, "the controller to be cancelled")
    assert marker.read_text() == "cancelled"
    # Counted (and logged) as what the caller was answered.
    wait_until(
        lambda: handled(capped_server, "SayHello", "DEADLINE_EXCEEDED") == before + 1, 5,
        "the call to be counted DEADLINE_EXCEEDED",
    )
    wait_until(
        lambda: 'SayHello from ipv4:127.0.0.1' in capped_server.output
        and 'ran past its 0.3 s limit (GRPC["METHOD_TIMEOUTS"])' in capped_server.output, 5,
        "the warning to be logged",
    )


def test_the_controller_sees_the_earlier_of_the_cap_and_the_callers_deadline(stub):
    no_deadline = float(stub.SayHello(Req(name="remaining")).message)
    assert 0 < no_deadline <= CAP
    later = float(stub.SayHello(Req(name="remaining"), timeout=30).message)
    assert 0 < later <= CAP
    # (The caller's deadline crosses the wire in grpc-timeout, rounded: a few ms of slack.)
    earlier = float(stub.SayHello(Req(name="remaining"), timeout=0.15).message)
    assert 0 < earlier <= 0.155


def test_a_capped_server_stream_in_a_worker_thread_is_answered_on_time(capped_server, stub):
    """A plain ``def`` generator cannot be stopped: the call is answered at its cap, what its
    thread produces afterwards is dropped."""
    before = handled(capped_server, "LotsOfReplies", "DEADLINE_EXCEEDED")
    replies = []
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.LotsOfReplies(Req(name="slow", count=20, delay_ms=100)):  # 2 s
            replies.append(reply.message)
    took = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == cap_message("LotsOfReplies")
    assert CAP <= took < CAP + MARGIN, took
    assert 0 < len(replies) < 20, replies
    wait_until(
        lambda: handled(capped_server, "LotsOfReplies", "DEADLINE_EXCEEDED") == before + 1, 5,
        "the stream to be counted DEADLINE_EXCEEDED",
    )


def test_a_capped_bidirectional_stream_is_cancelled(stub, tmp_path):
    marker = tmp_path / "cancelled"
    replies = []
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for reply in stub.BidiHello(iter([Req(name=f"cancelled:{marker}", delay_ms=5000)])):
            replies.append(reply.message)
    took = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == cap_message("BidiHello")
    assert CAP <= took < CAP + MARGIN, took
    assert replies == ["first"]
    wait_until(marker.exists, 5, "the stream's controller to be cancelled")


def test_a_method_without_a_cap_runs_as_long_as_its_caller_allows(stub):
    def slowly() -> Iterator[hello_pb2.HelloRequest]:
        for name in "abcd":
            time.sleep(0.2)  # 0.8 s in all: well past the other methods' cap
            yield Req(name=name)

    started = time.monotonic()
    reply = stub.LotsOfGreetings(slowly(), timeout=10)
    assert reply.message == "a,b,c,d"
    assert time.monotonic() - started >= 0.8


def test_a_call_made_while_serving_gets_the_capped_deadline(fleet):
    """The client library reads the deadline of the request being served from ``ctx``: a
    downstream call of a capped method's controller never outlives the cap."""
    capped = fleet("capped", grpc={"METHOD_TIMEOUTS": {"/helloworld.Greeter/SayHello": 0.5}})[0]
    fleet("plain")
    with grpc.insecure_channel(capped.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        def relayed() -> str:
            return stub.SayHello(Req(name="relay:plain"), timeout=10).message

        # The caller gives 10 s, the client's TIMEOUT is 2 s: the cap is what plain sees.
        remaining = float(wait_until(relayed, 10, "capped to find plain"))
    assert 0 < remaining <= 0.5


# -- every RPC kind, observed in-process ---------------------------------------------------------

_GREETER = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]
_KINDS = {
    "SayHello": "unary",
    "LotsOfReplies": "server_stream",
    "LotsOfGreetings": "client_stream",
    "BidiHello": "bidi_stream",
}


class _Seen:
    """What the server saw: the controllers cancelled, the ends observed, the access lines."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.ends: list[tuple[str, grpc.StatusCode]] = []
        self.lines: list[tuple[str, str]] = []


def _routes(seen: _Seen) -> list:
    from microframe.core.router import rpc

    async def hang(method: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.cancelled.append(method)
            raise

    async def say_hello(ctx, request):
        await hang("SayHello")
        return hello_pb2.HelloReply(message="late")

    async def lots_of_replies(ctx, request):
        yield hello_pb2.HelloReply(message="first")
        await hang("LotsOfReplies")

    async def lots_of_greetings(ctx, requests):
        async for _ in requests:
            await hang("LotsOfGreetings")
        return hello_pb2.HelloReply(message="late")

    async def bidi_hello(ctx, requests):
        async for _ in requests:
            yield hello_pb2.HelloReply(message="first")
            await hang("BidiHello")

    return [
        rpc(_GREETER, "SayHello", say_hello),
        rpc(_GREETER, "LotsOfReplies", lots_of_replies),
        rpc(_GREETER, "LotsOfGreetings", lots_of_greetings),
        rpc(_GREETER, "BidiHello", bidi_hello),
    ]


def _end_observer(seen: _Seen):
    class EndObserver:
        def __init__(self, next, route):
            self.next = next

        async def __call__(self, ctx, request):
            ctx.on_end(lambda code, exc: seen.ends.append((ctx.method, code)))
            return await self.next(ctx, request)

    return EndObserver


class _AccessLines(logging.Handler):
    def __init__(self, seen: _Seen) -> None:
        super().__init__(logging.INFO)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.lines.append((record.getMessage().split()[0].rsplit("/", 1)[-1], record.code))


def _handled_here(method: str, code: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"grpc_type": _KINDS[method], "grpc_service": "helloworld.Greeter",
              "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


@contextlib.asynccontextmanager
async def _capped_server(seen: _Seen, transport: str):
    from microframe.test import override_settings, serve

    middleware = [
        "microframe.contrib.metrics.middleware.MetricsMiddleware",
        "microframe.contrib.logging.middleware.AccessLogMiddleware",
        _end_observer(seen),
    ]
    logger = logging.getLogger("microframe.access")
    level, lines = logger.level, _AccessLines(seen)
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with override_settings(
            merge=True, ACCESS_LOG={"ENABLED": True},
            GRPC={"TRANSPORT": transport, "METHOD_TIMEOUTS": {"/helloworld.Greeter/*": CAP}},
        ):
            async with serve(routes=_routes(seen), middleware=middleware) as server:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    yield server, channel
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


async def _finish(channel: grpc.aio.Channel, method: str) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` without a deadline; its code and details."""
    path = f"/helloworld.Greeter/{method}"
    payload = Req(name="slow").SerializeToString()

    async def one() -> object:
        yield payload
        await asyncio.sleep(30)  # the request stream stays open

    kind = _KINDS[method]
    if kind == "unary":
        call = channel.unary_unary(path)(payload)
    elif kind == "server_stream":
        call = channel.unary_stream(path)(payload)
    elif kind == "client_stream":
        call = channel.stream_unary(path)(one())
    else:
        call = channel.stream_stream(path)(one())
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    finally:
        call.cancel()
    return grpc.StatusCode.OK, ""


async def test_every_rpc_kind_is_capped_and_observed_deadline_exceeded(transport):
    """For every kind: the caller is answered DEADLINE_EXCEEDED at the cap, the controller is
    cancelled, and the metrics, the access log and ``ctx.on_end`` all see DEADLINE_EXCEEDED
    (not the cancellation that stopped the controller)."""
    seen = _Seen()
    async with _capped_server(seen, transport) as (server, channel):
        for method in _KINDS:
            before = _handled_here(method, "DEADLINE_EXCEEDED")
            started = time.monotonic()
            code, details = await asyncio.wait_for(_finish(channel, method), 5)
            took = time.monotonic() - started
            assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, cap_message(method))
            assert CAP <= took < CAP + MARGIN, (method, took)
            deadline = time.monotonic() + 5
            while not (seen.ends and seen.lines and seen.cancelled):
                assert time.monotonic() < deadline, (method, seen.__dict__)
                await asyncio.sleep(0.01)
            assert seen.cancelled == [method]
            assert seen.ends == [(method, grpc.StatusCode.DEADLINE_EXCEEDED)]
            assert seen.lines == [(method, "DEADLINE_EXCEEDED")]
            assert _handled_here(method, "DEADLINE_EXCEEDED") == before + 1
            seen.__init__()  # type: ignore[misc]


def test_an_exact_name_wins_over_its_services_cap():
    from microframe.core.server import ServerConfig

    config = ServerConfig(method_timeouts={"/a.B/*": 1.0, "/a.B/C": 0.25})
    assert config.method_timeout("/a.B/C") == 0.25
    assert config.method_timeout("/a.B/D") == 1.0
    assert config.method_timeout("/a.X/C") is None
    assert ServerConfig().method_timeout("/a.B/C") is None


def test_only_capped_methods_get_a_capped_handler_and_context():
    """The cap is decided when the handlers are built: an uncapped method's terminal handler
    and request context are the ones a server without caps builds."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from microframe.core.context import RequestContext, capped_context
    from microframe.core.handlers import controller_handler
    from microframe.core.router import rpc
    from microframe.core.transport import NativeRequestContext

    async def say_hello(ctx, request):
        return hello_pb2.HelloReply()

    plain = rpc(_GREETER, "SayHello", say_hello)
    capped = dataclasses.replace(plain, timeout=0.5)
    with ThreadPoolExecutor(1) as executor:
        assert controller_handler(plain, executor).__name__ == "unary_response"
        assert controller_handler(capped, executor).__name__ == "within_cap"
    for base in (RequestContext, NativeRequestContext):
        made = capped_context(base)
        assert made is capped_context(base) and made.__bases__ == (base,)
        assert base.time_remaining is not made.time_remaining


async def test_one_timer_cuts_only_the_calls_past_their_cap(transport):
    """Many calls of a capped method at once, started over time: each slow one is cut at its
    own cap (the method's one timer re-armed as they come and go), the quick ones are not."""
    from microframe.core.router import rpc
    from microframe.test import override_settings, serve

    async def say_hello(ctx, request):
        await asyncio.sleep(request.delay_ms / 1000)
        return hello_pb2.HelloReply(message="done")

    async def call(stub, delay_ms: int, after: float) -> tuple[int, str, float]:
        await asyncio.sleep(after)
        started = time.monotonic()
        try:
            await stub.SayHello(Req(delay_ms=delay_ms), timeout=10)
            code = "OK"
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        return delay_ms, code, time.monotonic() - started

    with override_settings(merge=True, GRPC={
        "TRANSPORT": transport, "METHOD_TIMEOUTS": {"/helloworld.Greeter/SayHello": CAP},
    }):
        async with serve(routes=[rpc(_GREETER, "SayHello", say_hello)], middleware=[]) as server:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = hello_pb2_grpc.GreeterStub(channel)
                results = await asyncio.wait_for(asyncio.gather(*[
                    call(stub, 2000 if i % 2 else 20, after=i * 0.004) for i in range(100)
                ]), 10)
    for delay_ms, code, took in results:
        if delay_ms == 20:
            assert code == "OK", (delay_ms, code, took)
        else:
            assert code == "DEADLINE_EXCEEDED" and CAP <= took < CAP + MARGIN, (code, took)
