"""The metrics battery: the middleware over a real grpc.aio server, the /metrics endpoint over
real HTTP (linted with promtool), constant labels, and multiprocess aggregation.

The metric objects are process-global, so tests assert on deltas between two scrapes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from microframe import NotFound
from microframe.contrib.metrics import exposition
from microframe.contrib.metrics.exposition import render_metrics, start_http_server
from microframe.contrib.metrics.metrics import (
    DEFAULT_BUCKETS,
    client_metrics,
    configured_buckets,
    server_metrics,
)
from microframe.contrib.metrics.middleware import MetricsMiddleware, status_code_of
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.handlers import controller_handler, grpc_method_handler
from microframe.core.middleware import build_chain
from microframe.core.router import Route, rpc
from microframe.test import override_settings

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env, require_binary

MW = "microframe.contrib.metrics.middleware.MetricsMiddleware"
SERVICE = "helloworld.Greeter"
Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]
Req = hello_pb2.HelloRequest
Reply = hello_pb2.HelloReply

Key = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(autouse=True)
def configured() -> None:
    from microframe.conf import settings

    if not settings.configured:
        settings.configure()


# ---------------------------------------------------------------------------------------------
# Helpers


def parse(text: str) -> dict[Key, float]:
    """Return every sample of an exposition as {(name, labels): value}."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode(), response.headers["Content-Type"]


def promtool_check(text: str) -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def labels_of(kind: str, method: str, **extra: str) -> dict[str, str]:
    return {
        "grpc_type": kind,
        "grpc_service": SERVICE,
        "grpc_method": method,
        "env": "test",
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# Controllers of helloworld.Greeter, one per RPC kind.


async def say_hello(ctx: Any, request: Any) -> Any:
    if request.name == "missing":
        raise NotFound("no such greeting")
    if request.name == "abort":
        await ctx.grpc.abort(grpc.StatusCode.PERMISSION_DENIED, "go away")
    if request.name == "boom":
        raise RuntimeError("controller bug")
    return Reply(message=f"Hello, {request.name}!")


async def lots_of_replies(ctx: Any, request: Any) -> AsyncIterator[Any]:
    for i in range(1, (request.count or 3) + 1):
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        if request.name == "boom" and i == 2:
            raise RuntimeError("stream broke")
        yield Reply(message=f"Hello #{i}, {request.name}!")


async def lots_of_greetings(ctx: Any, requests: Any) -> Any:
    names = [r.name async for r in requests]
    return Reply(message=f"Hello, {', '.join(names)}!")


async def bidi_hello(ctx: Any, requests: Any) -> AsyncIterator[Any]:
    async for r in requests:
        yield Reply(message=f"Hello, {r.name}!")


ROUTES = [
    rpc(Greeter, "SayHello", say_hello),
    rpc(Greeter, "LotsOfReplies", lots_of_replies),
    rpc(Greeter, "LotsOfGreetings", lots_of_greetings),
    rpc(Greeter, "BidiHello", bidi_hello),
]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=False)


@pytest.fixture
async def greeter(executor: ThreadPoolExecutor) -> AsyncIterator[hello_pb2_grpc.GreeterStub]:
    """Serve helloworld.Greeter through MetricsMiddleware on a free loopback port."""
    handlers = {}
    for route in ROUTES:
        chain, used = build_chain(route, controller_handler(route, executor), [MW])
        assert used == [MW]
        handlers[route.method] = grpc_method_handler(route, chain)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield hello_pb2_grpc.GreeterStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
def metrics_server() -> Iterator[exposition.MetricsServer]:
    server = start_http_server("127.0.0.1", 0, labels={"env": "test"})
    yield server
    server.close()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# End to end: real grpc.aio server, real channel, real HTTP scrape, promtool.


async def test_every_rpc_kind_is_counted_and_scraped(greeter, metrics_server):
    before = parse(render_metrics({"env": "test"}).decode())

    assert (await greeter.SayHello(Req(name="Ada"), timeout=5)).message == "Hello, Ada!"
    assert (await greeter.SayHello(Req(name="Bo"), timeout=5)).message == "Hello, Bo!"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await greeter.SayHello(Req(name="missing"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    replies = [r.message async for r in greeter.LotsOfReplies(Req(name="Cy", count=4), timeout=5)]
    assert len(replies) == 4

    async def names(*values: str) -> AsyncIterator[Any]:
        for v in values:
            yield Req(name=v)

    reply = await greeter.LotsOfGreetings(names("a", "b", "c"), timeout=5)
    assert reply.message == "Hello, a, b, c!"
    answers = [r.message async for r in greeter.BidiHello(names("x", "y"), timeout=5)]
    assert answers == ["Hello, x!", "Hello, y!"]

    assert metrics_server.port > 0
    text, content_type = await asyncio.to_thread(
        scrape, f"http://127.0.0.1:{metrics_server.port}/metrics"
    )
    assert content_type.startswith("text/plain")
    after = parse(text)

    def delta(name: str, kind: str, method: str, **extra: str) -> float:
        labels = labels_of(kind, method, **extra)
        return value(after, name, **labels) - value(before, name, **labels)

    expected = {
        # (kind, method): (started, handled per code, received, sent, histogram count)
        ("unary", "SayHello"): (3, {"OK": 2, "NOT_FOUND": 1}, 3, 2, 3),
        ("server_stream", "LotsOfReplies"): (1, {"OK": 1}, 1, 4, 1),
        ("client_stream", "LotsOfGreetings"): (1, {"OK": 1}, 3, 1, 1),
        ("bidi_stream", "BidiHello"): (1, {"OK": 1}, 2, 2, 1),
    }
    for (kind, method), (started, handled, received, sent, count) in expected.items():
        where = f"{kind} {method}"
        assert delta("grpc_server_started_total", kind, method) == started, where
        for code, n in handled.items():
            assert delta("grpc_server_handled_total", kind, method, grpc_code=code) == n, where
        assert delta("grpc_server_msg_received_total", kind, method) == received, where
        assert delta("grpc_server_msg_sent_total", kind, method) == sent, where
        assert delta("grpc_server_handling_seconds_count", kind, method) == count, where
        assert delta("grpc_server_handling_seconds_bucket", kind, method, le="+Inf") == count
        assert delta("grpc_server_handling_seconds_sum", kind, method) > 0, where

    # Every sample carries the constant label, the grpc ones included.
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families} >= {
        "grpc_server_started",
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "grpc_server_msg_received",
        "grpc_server_msg_sent",
        "process_cpu_seconds",
        "python_info",
    }
    for family in families:
        for s in family.samples:
            assert s.labels.get("env") == "test", s
    assert "# TYPE grpc_server_handling_seconds histogram" in text
    assert "# TYPE grpc_server_handled_total counter" in text

    await asyncio.to_thread(promtool_check, text)


async def test_error_codes_abort_and_internal(greeter, metrics_server):
    before = parse(render_metrics({"env": "test"}).decode())
    for name, code in [("abort", "PERMISSION_DENIED"), ("boom", "INTERNAL")]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await greeter.SayHello(Req(name=name), timeout=5)
        assert info.value.code().name == code
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in greeter.LotsOfReplies(Req(name="boom", count=3), timeout=5):
            pass
    assert info.value.code() == grpc.StatusCode.INTERNAL

    text, _ = await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_server.port}/metrics")
    after = parse(text)

    def delta(name: str, kind: str, method: str, **extra: str) -> float:
        labels = labels_of(kind, method, **extra)
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "grpc_server_handled_total"
    assert delta(handled, "unary", "SayHello", grpc_code="PERMISSION_DENIED") == 1
    assert delta(handled, "unary", "SayHello", grpc_code="INTERNAL") == 1
    assert delta("grpc_server_msg_sent_total", "unary", "SayHello") == 0
    assert delta(handled, "server_stream", "LotsOfReplies", grpc_code="INTERNAL") == 1
    assert delta("grpc_server_msg_sent_total", "server_stream", "LotsOfReplies") == 1
    assert delta("grpc_server_handling_seconds_count", "server_stream", "LotsOfReplies") == 1


async def test_server_stream_is_timed_until_its_end_and_cancel_is_counted(greeter):
    from prometheus_client import REGISTRY

    labels = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "LotsOfReplies"}

    def get(name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    def snapshot() -> tuple[float, float, float, float]:
        return (
            get("grpc_server_handling_seconds_sum"),
            get("grpc_server_handling_seconds_count"),
            get("grpc_server_handled_total", grpc_code="CANCELLED"),
            get("grpc_server_handled_total", grpc_code="OK"),
        )

    sum0, count0, cancelled0, ok0 = snapshot()
    # Three messages, 80 ms apart: the call lasts >= 0.24 s though the controller returns at once.
    replies = [
        r async for r in greeter.LotsOfReplies(Req(name="t", count=3, delay_ms=80), timeout=5)
    ]
    assert len(replies) == 3
    await wait_for(lambda: snapshot()[1] == count0 + 1)
    sum1, count1, _, ok1 = snapshot()
    assert sum1 - sum0 >= 0.2
    assert ok1 == ok0 + 1

    # The caller goes away after two messages of a long stream.
    call = greeter.LotsOfReplies(Req(name="t", count=1000, delay_ms=20), timeout=10)
    got = 0
    async for _ in call:
        got += 1
        if got == 2:
            break
    call.cancel()
    await wait_for(lambda: snapshot()[2] == cancelled0 + 1)
    assert snapshot()[1] == count1 + 1


async def test_exposition_formats_and_paths(metrics_server):
    base = f"http://127.0.0.1:{metrics_server.port}"
    text, content_type = await asyncio.to_thread(
        scrape, base + "/metrics", "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert 'env="test"' in text
    health, _ = await asyncio.to_thread(scrape, base + "/healthz")
    assert health == "ok\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(scrape, base + "/nope")
    assert info.value.code == 404
    assert metrics_server.url == f"{base}/metrics"


def test_close_releases_the_port():
    server = start_http_server("127.0.0.1", 0)
    port = server.port
    server.close()
    server.close()  # idempotent
    again = start_http_server("127.0.0.1", port)
    try:
        assert again.port == port
    finally:
        again.close()


# ---------------------------------------------------------------------------------------------
# Building the middleware


def _terminal_route(method: str = "SayHello") -> Route:
    return rpc(Greeter, method, say_hello)


def test_disabled_middleware_leaves_the_chain():
    route = _terminal_route()
    with override_settings(merge=True, METRICS={"ENABLED": False}):
        with pytest.raises(MiddlewareNotUsed):
            MetricsMiddleware(say_hello, route=route)
        chain, used = build_chain(route, say_hello, [MW])
    assert used == [] and chain is say_hello


def test_middleware_needs_the_route():
    with pytest.raises(ImproperlyConfigured):
        MetricsMiddleware(say_hello)


def test_handled_children_are_cached_per_code():
    mw = MetricsMiddleware(say_hello, route=_terminal_route())
    child = mw.handled_child(grpc.StatusCode.NOT_FOUND)
    assert mw.handled_child(grpc.StatusCode.NOT_FOUND) is child
    assert mw.handled_child(grpc.StatusCode.OK) is mw._plain.handled_ok


class _GrpcContext:
    def __init__(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code


def test_status_code_of():
    assert status_code_of(NotFound()) == grpc.StatusCode.NOT_FOUND
    assert status_code_of(asyncio.CancelledError()) == grpc.StatusCode.CANCELLED
    assert status_code_of(ValueError()) == grpc.StatusCode.INTERNAL
    abort = grpc.aio.AbortError()
    assert status_code_of(abort) == grpc.StatusCode.UNKNOWN
    assert status_code_of(abort, _GrpcContext(grpc.StatusCode.ABORTED)) == grpc.StatusCode.ABORTED
    assert status_code_of(abort, _GrpcContext(5)) == grpc.StatusCode.NOT_FOUND
    assert status_code_of(abort, _GrpcContext(None)) == grpc.StatusCode.UNKNOWN


def test_families_are_created_once():
    assert server_metrics() is server_metrics()
    assert client_metrics() is client_metrics()
    from microframe.contrib.metrics import metrics

    assert metrics.grpc_server_started_total is server_metrics().started
    assert metrics.grpc_client_handling_seconds is client_metrics().handling_seconds
    with pytest.raises(AttributeError):
        metrics.grpc_server_nope  # noqa: B018


def test_buckets_setting():
    with override_settings(merge=True, METRICS={"BUCKETS": (0.1, 1, 10)}):
        assert configured_buckets() == (0.1, 1.0, 10.0)
    with override_settings(merge=True, METRICS={"BUCKETS": None}):
        assert configured_buckets() == DEFAULT_BUCKETS
    with override_settings(merge=True, METRICS={"BUCKETS": (1, 0.5)}):
        with pytest.raises(ImproperlyConfigured):
            configured_buckets()


def test_buckets_are_read_when_the_metrics_are_created(tmp_path: Path):
    code = textwrap.dedent(
        """
        from microframe.conf import settings
        settings.configure(METRICS={"BUCKETS": (0.042, 0.5)})
        from microframe.contrib.metrics.exposition import render_metrics
        from microframe.contrib.metrics.metrics import client_metrics, server_metrics
        server_metrics().handling_seconds.labels("unary", "b.S", "M").observe(0.01)
        client_metrics().handling_seconds.labels("unary", "b.S", "M").observe(0.01)
        print(render_metrics().decode())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for side in ("server", "client"):
        for le in ("0.042", "0.5", "+Inf"):
            line = f'grpc_{side}_handling_seconds_bucket{{grpc_method="M",grpc_service="b.S",grpc_type="unary",le="{le}"}} 1.0'
            assert line in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------
# Constant labels


def test_constant_labels_on_every_sample_without_overriding():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    c = Counter("jobs", "Jobs.", ["env", "kind"], registry=registry)
    c.labels("own", "a").inc()
    Counter("plain", "Plain.", registry=registry).inc(2)
    samples = parse(render_metrics({"env": "test", "idc": "bj"}, registry=registry).decode())
    assert value(samples, "jobs_total", env="own", kind="a", idc="bj") == 1
    assert value(samples, "plain_total", env="test", idc="bj") == 2
    assert all(dict(labels).get("idc") == "bj" for _, labels in samples)


@pytest.mark.parametrize("labels", [{"1env": "x"}, {"__env": "x"}, {"e-nv": "x"}, {"env": None}])
def test_invalid_constant_labels(labels):
    with pytest.raises(ImproperlyConfigured):
        render_metrics(labels)


def test_restricted_scrape_keeps_labels():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("wanted", "W.", registry=registry).inc()
    Counter("unwanted", "U.", registry=registry).inc()
    with start_http_server("127.0.0.1", 0, labels={"env": "test"}, registry=registry) as server:
        text, _ = scrape(f"http://127.0.0.1:{server.port}/metrics?name[]=wanted_total")
    assert 'wanted_total{env="test"} 1.0' in text
    assert "unwanted" not in text


# ---------------------------------------------------------------------------------------------
# Multiprocess mode


WORKER = """
import sys
from microframe.contrib.metrics.metrics import server_metrics
m = server_metrics()
n = int(sys.argv[1])
m.started.labels("unary", "mp.Svc", "Go").inc(n)
m.handled.labels("unary", "mp.Svc", "Go", "OK").inc(n)
m.handling_seconds.labels("unary", "mp.Svc", "Go").observe(0.003)
"""


def test_multiprocess_aggregation(tmp_path: Path):
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = base_env(PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(n)], cwd=ROOT, env=env) for n in (3, 4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(list(mp_dir.glob("*.db"))) >= 2

    with start_http_server(
        "127.0.0.1", 0, labels={"env": "test"}, multiprocess_dir=str(mp_dir)
    ) as server:
        text, _ = scrape(f"http://127.0.0.1:{server.port}/metrics")
    samples = parse(text)
    go = {"grpc_type": "unary", "grpc_service": "mp.Svc", "grpc_method": "Go", "env": "test"}
    assert value(samples, "grpc_server_started_total", **go) == 7
    assert value(samples, "grpc_server_handled_total", **go, grpc_code="OK") == 7
    assert value(samples, "grpc_server_handling_seconds_count", **go) == 2
    assert value(samples, "grpc_server_handling_seconds_bucket", **go, le="0.005") == 2
    assert "process_cpu_seconds_total" in text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.get("env") == "test", s
    promtool_check(text)

    # A dead worker's counters stay in the total.
    exposition.mark_process_dead(procs[0].pid, str(mp_dir))
    samples = parse(render_metrics({"env": "test"}, multiprocess_dir=str(mp_dir)).decode())
    assert value(samples, "grpc_server_started_total", **go) == 7


def test_multiprocess_dir_must_exist(tmp_path: Path):
    with pytest.raises(ImproperlyConfigured):
        start_http_server("127.0.0.1", 0, multiprocess_dir=str(tmp_path / "missing"))


def test_created_samples_are_left_out_unless_asked():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", registry=registry).inc()
    Histogram("work_seconds", "Work.", registry=registry).observe(0.1)
    Gauge("queue_created", "A gauge whose own name ends in _created.", registry=registry).set(3)
    text = render_metrics(registry=registry).decode()
    assert "jobs_created" not in text and "work_seconds_created" not in text
    assert "jobs_total 1.0" in text and "work_seconds_count 1.0" in text
    assert "queue_created 3.0" in text
    text = render_metrics(registry=registry, created=True).decode()
    assert "jobs_created" in text and "work_seconds_created" in text


async def test_a_stream_is_recorded_once_when_the_handler_ends_the_call():
    """The stream's end is the method handler's to tell (``ctx.on_end``), not the stream's:
    closing or dropping the stream records nothing; the end is recorded once, with its code."""
    from prometheus_client import REGISTRY

    from microframe.core.context import RequestContext

    route = rpc(Greeter, "LotsOfReplies", lots_of_replies)
    labels = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "LotsOfReplies"}

    def cancelled() -> float:
        return (
            REGISTRY.get_sample_value(
                "grpc_server_handled_total", {**labels, "grpc_code": "CANCELLED"}
            )
            or 0.0
        )

    async def terminal(ctx: Any, request: Any) -> AsyncIterator[Any]:
        return lots_of_replies(ctx, Req(name="d", count=5))

    mw = MetricsMiddleware(terminal, route=route)
    before = cancelled()

    ctx = RequestContext(route, None)  # type: ignore[arg-type]
    stream = await mw(ctx, Req())
    await stream.__anext__()
    await stream.aclose()
    del stream
    await asyncio.sleep(0)
    assert cancelled() == before
    ctx._ended(grpc.StatusCode.CANCELLED, None)
    ctx._ended(grpc.StatusCode.CANCELLED, None)
    assert cancelled() == before + 1


def test_restricted_scrape_in_multiprocess_mode(tmp_path: Path):
    env = base_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", WORKER, "2"], cwd=ROOT, env=env, check=True, timeout=60)
    with start_http_server("127.0.0.1", 0, multiprocess_dir=str(tmp_path)) as server:
        text, _ = scrape(f"http://127.0.0.1:{server.port}/metrics?name[]=grpc_server_started_total")
    assert (
        'grpc_server_started_total{grpc_method="Go",grpc_service="mp.Svc",grpc_type="unary"} 2.0'
        in text
    ), text
    assert "grpc_server_handled_total" not in text and "process_" not in text
