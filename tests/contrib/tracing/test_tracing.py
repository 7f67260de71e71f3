"""Tracing on the wire: spans from real service processes, caught by a Jaeger agent (UDP thrift)
and an OTLP/gRPC collector, and a trace followed from one service to another."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, service_settings
from support.polling import wait_until
from support.servers import ServerProcess
from support.servers import say_hello as call
from support.tracing_receivers import JaegerAgent, OtlpCollector

METHOD = "/helloworld.Greeter/SayHello"


@pytest.fixture
def jaeger_agent():
    agent = JaegerAgent()
    yield agent
    agent.close()


@pytest.fixture
def otlp_collector():
    collector = OtlpCollector()
    yield collector
    collector.close()


@pytest.fixture
def traced(tmp_path, transport):
    """Start service processes with TRACING set; registered in the test's own file registry."""
    registry_dir = tmp_path / "registry"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    started: list[ServerProcess] = []

    def start(name: str, tracing: dict, **extra: object) -> ServerProcess:
        module = f"svc_{name}_{len(started)}"
        extra.setdefault("LOG", {"DIR": str(tmp_path / f"logs-{module}")})
        extra.setdefault("ACCESS_LOG", {"ENABLED": True})
        settings = service_settings(tmp_path, module, name, {
            "BACKEND": "microframe.contrib.registry.file.FileRegistry",
            "OPTIONS": {"directory": str(registry_dir), "ttl": 1.5},
            "CACHE_DIR": str(tmp_path / f"cache-{module}"),
        }, TRACING=tracing, **extra)
        server = ServerProcess(tmp_path, settings=settings, env=env, transport=transport)
        started.append(server)
        server.log_dir = tmp_path / f"logs-{module}"  # type: ignore[attr-defined]
        return server.wait_serving()

    yield start
    for server in started:
        server.kill()


def jaeger(agent: JaegerAgent, **overrides: object) -> dict:
    return {
        "ENABLED": True,
        "BACKEND": "jaeger",
        "SAMPLER": {"type": "const", "param": 1},
        "REPORTER": {"LOCAL_AGENT_HOST_PORT": agent.address, "FLUSH_INTERVAL": 0.1},
        **overrides,
    }


def otlp(collector: OtlpCollector, **overrides: object) -> dict:
    return {
        "ENABLED": True,
        "BACKEND": "otlp",
        "SAMPLER": {"type": "const", "param": 1},
        "REPORTER": {"FLUSH_INTERVAL": 0.1},
        "OTLP": {"ENDPOINT": collector.address, "INSECURE": True, "HEADERS": {"x-tenant": "lab"}},
        **overrides,
    }


def test_jaeger_server_span_on_the_wire(traced, jaeger_agent):
    server = traced("tracedj", jaeger(jaeger_agent, TAGS={"idc": "lab"}))
    trace_id = call(server, "trace")
    assert len(trace_id) == 32 and int(trace_id, 16)
    spans = jaeger_agent.wait_for(lambda s: any(x.trace_id == trace_id for x in s), what="the server span")
    span = next(s for s in spans if s.trace_id == trace_id)
    assert span.service == "tracedj"
    assert span.name == METHOD
    assert span.parent_id is None
    assert span.tags["span.kind"] == "server"
    assert span.tags["component"] == "grpc"
    assert span.tags["rpc.service"] == "helloworld.Greeter"
    assert span.tags["rpc.method"] == "SayHello"
    assert span.tags["grpc.status_code"] == "OK"
    assert span.tags["peer.address"].startswith("ipv4:127.0.0.1:")
    # What the controller did with ctx.span.
    assert span.tags["greeting.kind"] == "trace"
    assert {"event": "greeted", "name": "trace"} in span.logs
    # The request's log line carries the tracing trace id.
    wait_until(lambda: f"[{trace_id} helloworld.Greeter SayHello] tracing this call" in server.output, 10, "the log line")


def test_jaeger_continues_the_callers_trace_and_records_errors(traced, jaeger_agent):
    server = traced("tracedj2", jaeger(jaeger_agent))
    caller_trace, caller_span = "00000000000000000000000000abcdef", "0000000000001234"
    header = f"{caller_trace.lstrip('0')}:{caller_span.lstrip('0')}:0:1"
    assert call(server, "trace", metadata=(("uber-trace-id", header),)) == caller_trace
    with pytest.raises(grpc.RpcError) as err:
        call(server, "raise")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.RpcError) as err:
        call(server, "notfound")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    spans = jaeger_agent.wait_for(lambda s: len(s) >= 3, what="three spans")
    child = next(s for s in spans if s.trace_id == caller_trace)
    assert child.parent_id == caller_span
    failed = next(s for s in spans if s.tags.get("grpc.status_code") == "INTERNAL")
    assert failed.tags["error"] is True
    assert any(log.get("event") == "error" and log.get("error.kind") == "ValueError" for log in failed.logs)
    business = next(s for s in spans if s.tags.get("grpc.status_code") == "NOT_FOUND")
    assert "error" not in business.tags  # a business answer is not the server's fault


def test_jaeger_sampling_zero_sends_nothing_but_follows_a_sampled_caller(traced, jaeger_agent):
    server = traced("tracedj0", jaeger(jaeger_agent, SAMPLER={"type": "probabilistic", "param": 0}))
    ids = {call(server, "trace") for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 32 for i in ids)  # a trace id per call all the same
    sampled = "abc123"
    assert call(server, "trace", metadata=(("uber-trace-id", f"{sampled}:99:0:1"),)).endswith(sampled)
    spans = jaeger_agent.wait_for(lambda s: len(s) >= 1, what="the span of the sampled caller")
    time.sleep(0.5)  # the reporter flushes every 0.1 s: give unsampled spans a chance to show up
    assert [s.trace_id.lstrip("0") for s in jaeger_agent.spans] == [sampled], spans


def test_otlp_server_span_on_the_wire(traced, otlp_collector):
    server = traced("tracedo", otlp(otlp_collector))
    trace_id = call(server, "trace")
    spans = otlp_collector.wait_for(lambda s: any(x.trace_id == trace_id for x in s), what="the server span")
    span = next(s for s in spans if s.trace_id == trace_id)
    assert span.service == "tracedo"
    assert span.name == METHOD
    assert span.tags["rpc.method"] == "SayHello"
    assert span.tags["grpc.status_code"] == "OK"
    assert span.tags["greeting.kind"] == "trace"
    assert any(log["event"] == "greeted" for log in span.logs), span.logs
    assert otlp_collector.metadata[0].get("x-tenant") == "lab"
    # W3C traceparent from a caller.
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{parent_trace}-{parent_span}-01"),)
    assert call(server, "trace", metadata=metadata) == parent_trace
    spans = otlp_collector.wait_for(lambda s: any(x.trace_id == parent_trace for x in s), what="the child span")
    assert next(s for s in spans if s.trace_id == parent_trace).parent_id == parent_span
    with pytest.raises(grpc.RpcError):
        call(server, "raise")
    spans = otlp_collector.wait_for(lambda s: any(x.tags.get("grpc.status_code") == "INTERNAL" for x in s))
    failed = next(s for s in spans if s.tags.get("grpc.status_code") == "INTERNAL")
    assert failed.tags["error"] is True
    assert failed.tags["otel.status_code"] == 2  # STATUS_CODE_ERROR
    assert any(log["event"] == "exception" and log.get("exception.type") == "ValueError" for log in failed.logs)


@pytest.mark.parametrize("backend", ["jaeger", "otlp"])
def test_one_trace_across_two_services(traced, jaeger_agent, otlp_collector, backend):
    make, receiver = (jaeger, jaeger_agent) if backend == "jaeger" else (otlp, otlp_collector)
    back = traced(f"back{backend}", make(receiver))
    front = traced(f"front{backend}", make(receiver))
    assert float(call(front, f"relay:back{backend}")) > 0
    spans = receiver.wait_for(lambda s: len(s) >= 3, what="three spans (A server, A client, B server)")
    front_server = next(s for s in spans if s.service == f"front{backend}" and s.tags["span.kind"] == "server")
    front_client = next(s for s in spans if s.service == f"front{backend}" and s.tags["span.kind"] == "client")
    back_server = next(s for s in spans if s.service == f"back{backend}")
    assert front_server.trace_id == front_client.trace_id == back_server.trace_id
    assert front_server.parent_id is None
    assert front_client.parent_id == front_server.span_id
    assert back_server.parent_id == front_client.span_id
    assert front_client.tags["peer.service"] == f"back{backend}"
    assert front_client.tags["peer.address"] == back.address
    assert front_client.tags["grpc.status_code"] == "OK"
    # Both services' log files have the trace id on their access lines.
    trace_id = front_server.trace_id
    for server in (front, back):
        def logged(server: ServerProcess = server) -> bool:
            files = list(server.log_dir.glob("*.log"))  # type: ignore[attr-defined]
            return any(f"[{trace_id} helloworld.Greeter SayHello] {METHOD} OK" in f.read_text() for f in files)

        wait_until(logged, 10, f"the access line of {trace_id} in {server.address}'s log file")


def test_spans_are_flushed_on_graceful_stop(traced, jaeger_agent, otlp_collector):
    slow = {"FLUSH_INTERVAL": 60.0}
    by_jaeger = traced("flushj", jaeger(jaeger_agent, REPORTER={"LOCAL_AGENT_HOST_PORT": jaeger_agent.address, **slow}))
    by_otlp = traced("flusho", otlp(otlp_collector, REPORTER=slow))
    jaeger_trace, otlp_trace = call(by_jaeger, "trace"), call(by_otlp, "trace")
    assert not jaeger_agent.spans and not otlp_collector.spans  # nothing sent yet: 60 s interval
    assert by_jaeger.terminate() == 0 and by_otlp.terminate() == 0
    assert [s.trace_id for s in jaeger_agent.wait_for(lambda s: len(s) == 1)] == [jaeger_trace]
    assert [s.trace_id for s in otlp_collector.wait_for(lambda s: len(s) == 1)] == [otlp_trace]


def test_a_tracing_backend_that_is_down_costs_requests_nothing(traced, tmp_path):
    # Nothing listens on these ports: UDP datagrams are lost, OTLP exports fail and retry.
    dead = OtlpCollector()
    dead_address = dead.address
    dead.close()
    server = traced("deadend", {
        "ENABLED": True, "BACKEND": "otlp", "REPORTER": {"FLUSH_INTERVAL": 0.05},
        "OTLP": {"ENDPOINT": dead_address, "INSECURE": True, "TIMEOUT": 2.0},
    })
    with grpc.insecure_channel(server.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        durations = []
        for _ in range(200):
            start = time.perf_counter()
            stub.SayHello(hello_pb2.HelloRequest(name="x"), timeout=5)
            durations.append(time.perf_counter() - start)
    durations.sort()
    assert durations[int(len(durations) * 0.99)] < 0.1, durations[-5:]
    # And it stops within its grace period plus the exporter's bounded flush.
    start = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - start < 15


def test_log_backend_writes_spans_as_lines(traced):
    server = traced("tracedlog", {"ENABLED": True, "BACKEND": "log", "REPORTER": {"FLUSH_INTERVAL": 0.05}})
    trace_id = call(server, "trace")
    wait_until(lambda: f"span {METHOD} trace={trace_id}" in server.output, 10, "the span's log line")
    line = next(line for line in server.output.splitlines() if f"trace={trace_id}" in line and " span " in line)
    assert "microframe.tracing.spans" in line and "grpc.status_code=OK" in line and "parent=-" in line


def test_ratelimiting_sampler_keeps_at_most_the_rate():
    from microframe.contrib.tracing.tracers import otel_tracing

    tracing = otel_tracing("ratelimited", {
        "SAMPLER": {"type": "ratelimiting", "param": 5}, "REPORTER": {}, "TAGS": {},
    }, log=True)
    spans = [tracing.start_span("op", None, {}) for _ in range(200)]
    kept = sum(tracing.is_recording(span) for span in spans)
    assert 1 <= kept <= 6, kept  # a bucket of one second's worth, taken in well under a second
    for span in spans:
        span.finish()
    tracing.provider.shutdown()


def test_otlp_over_tls(traced, tmp_path):
    from support.etcd_cluster import generate_tls

    pki = generate_tls(tmp_path / "pki")
    collector = OtlpCollector(tls=(pki.server_cert.read_bytes(), pki.server_key.read_bytes()))
    try:
        server = traced("tracedtls", {
            "ENABLED": True, "BACKEND": "otlp", "REPORTER": {"FLUSH_INTERVAL": 0.1},
            "OTLP": {"ENDPOINT": collector.address, "INSECURE": False, "CA": str(pki.ca)},
        })
        trace_id = call(server, "trace")
        collector.wait_for(lambda s: any(x.trace_id == trace_id for x in s), what="the span, over TLS")
    finally:
        collector.close()
