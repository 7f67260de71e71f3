"""Span receivers for the tracing tests: what the backends' exporters really send, decoded.

- :class:`JaegerAgent`: a UDP socket on a free port, as the Jaeger agent listens on 6831; each
  datagram is a thrift ``Agent.emitBatch`` call in the compact protocol (what jaeger-client's
  UDP reporter sends), decoded with the thrift classes jaeger-client ships.
- :class:`OtlpCollector`: a gRPC server on a free port serving the OTLP ``TraceService`` from
  ``opentelemetry-proto``, as an OpenTelemetry collector does.

Both turn what they receive into :class:`Span` records (ids as hex strings) and let a test wait,
with a deadline, for the spans it expects.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    tags: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)


class _Receiver:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.batches = 0
        self._changed = threading.Condition()

    def _add(self, spans: list[Span]) -> None:
        with self._changed:
            self.spans.extend(spans)
            self.batches += 1
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 10.0, what: str = "spans") -> list[Span]:
        """Wait until ``predicate(spans)`` holds; return the spans received so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what} not received within {timeout} s; got {self.spans}")
                self._changed.wait(left)
            return list(self.spans)

    def named(self, name: str) -> list[Span]:
        with self._changed:
            return [s for s in self.spans if s.name == name]


def _hex(value: int, width: int) -> str:
    return f"{value & ((1 << (4 * width)) - 1):0{width}x}"


class JaegerAgent(_Receiver):
    """Receive jaeger-client's UDP thrift batches on a free loopback port."""

    def __init__(self) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jaeger-agent", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._add(self.decode(data))

    @staticmethod
    def decode(data: bytes) -> list[Span]:
        from jaeger_client.thrift_gen.agent import Agent
        from thrift.protocol import TCompactProtocol
        from thrift.transport import TTransport

        protocol = TCompactProtocol.TCompactProtocol(TTransport.TMemoryBuffer(data))
        protocol.readMessageBegin()
        args = Agent.emitBatch_args()
        args.read(protocol)
        protocol.readMessageEnd()
        batch = args.batch
        spans = []
        for s in batch.spans:
            trace_id = _hex(s.traceIdHigh, 16) + _hex(s.traceIdLow, 16)
            tags = {t.key: _tag_value(t) for t in (s.tags or [])}
            logs = [{f.key: _tag_value(f) for f in log.fields} for log in (s.logs or [])]
            spans.append(Span(
                service=batch.process.serviceName,
                name=s.operationName,
                trace_id=trace_id,
                span_id=_hex(s.spanId, 16),
                parent_id=_hex(s.parentSpanId, 16) if s.parentSpanId else None,
                tags=tags,
                logs=logs,
            ))
        return spans

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _tag_value(tag: Any) -> Any:
    for attr in ("vStr", "vBool", "vLong", "vDouble", "vBinary"):
        value = getattr(tag, attr)
        if value is not None:
            return value
    return None


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpCollector(_Receiver):
    """Serve OTLP/gRPC ``TraceService.Export`` on a free loopback port."""

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        """``tls``: (certificate chain, private key) PEM to serve TLS instead of plaintext."""
        super().__init__()
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                receiver.metadata.append(dict(context.invocation_metadata()))
                receiver._add(receiver.decode(request))
                return trace_service_pb2.ExportTraceServiceResponse()

        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    @staticmethod
    def decode(request: Any) -> list[Span]:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    tags = {a.key: _any_value(a.value) for a in s.attributes}
                    tags["otel.status_code"] = s.status.code
                    logs = [
                        {"event": e.name, **{a.key: _any_value(a.value) for a in e.attributes}}
                        for e in s.events
                    ]
                    spans.append(Span(
                        service=str(resource.get("service.name")),
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() if s.parent_span_id else None,
                        tags=tags,
                        logs=logs,
                    ))
        return spans

    def close(self) -> None:
        self.server.stop(None)
