"""The tracers behind ``TRACING["BACKEND"]``, each wrapped in a :class:`Tracing`.

Handlers and middleware use the opentracing API (``span.set_tag``, ``span.log_kv``) whatever
the backend:

``jaeger``
    jaeger-client's tracer; spans go in thrift batches over UDP to the Jaeger agent
    (``REPORTER["LOCAL_AGENT_HOST_PORT"]``); the context travels as ``uber-trace-id``.
``otlp``
    the OpenTelemetry SDK behind ``opentelemetry-opentracing-shim``; spans go through a batch
    processor to an OTLP/gRPC collector (``OTLP["ENDPOINT"]``); the context travels as W3C
    ``traceparent``.
``log``
    the same OpenTelemetry tracer, its spans written a line each to the
    ``microframe.tracing.spans`` logger (development, or a log-shipping pipeline).

Every exporter works in its own thread with a bounded queue: a tracing backend that is down
costs a request nothing more than putting a span on that queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.tracing")
#: The defaults of ``TRACING`` (``global_settings.TRACING``).
_DEFAULTS: dict[str, Any] = global_settings.TRACING

SAMPLER_TYPES = ("const", "probabilistic", "ratelimiting")


class Tracing:
    """An opentracing tracer, and what the middleware need around it."""

    backend = ""

    def __init__(self, tracer: Any) -> None:
        #: The opentracing ``Tracer``.
        self.tracer = tracer
        from opentracing import Format

        self._format = Format.TEXT_MAP

    def extract(self, metadata: Mapping[str, str]) -> Any:
        """The span context the caller sent in ``metadata``, or None (none, or unreadable)."""
        try:
            return self.tracer.extract(self._format, metadata)
        except Exception:
            return None

    def inject(self, span: Any, metadata: list[tuple[str, str]]) -> None:
        """Add ``span``'s context to outgoing ``metadata``."""
        carrier: dict[str, str] = {}
        self.tracer.inject(span.context, self._format, carrier)
        metadata.extend((key.lower(), value) for key, value in carrier.items())

    def start_span(self, operation: str, parent: Any, tags: Mapping[str, Any]) -> Any:
        """Start a span of ``operation``, child of the span context ``parent`` (or a root)."""
        return self.tracer.start_span(operation, child_of=parent, tags=dict(tags))

    def is_recording(self, span: Any) -> bool:
        """Whether ``span`` is sampled (its tags are kept and it will be reported)."""
        return True

    def trace_id(self, span: Any) -> str:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    def record_error(self, span: Any, exc: BaseException) -> None:
        """Log ``exc`` on ``span`` (opentracing's error event)."""
        span.log_kv({
            "event": "error",
            "error.kind": type(exc).__name__,
            "error.object": exc,
            "message": str(exc),
        })

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is buffered (waiting up to ``timeout`` seconds), then stop."""


class JaegerTracing(Tracing):
    """jaeger-client's tracer, with a fast path for spans that are not sampled.

    jaeger-client builds a full span (tags, logs, a lock) even when the sampler says no, which
    costs as much as the rest of a call's middleware. A span that is not sampled is made here
    as a plain ``opentracing.Span``: it keeps nothing and reports nothing, and its context
    (trace id, span id, flags 0, baggage) still travels to the services called, so a trace
    keeps one id across services whether or not it is sampled. The sampler is asked exactly as
    jaeger-client asks it (once per new trace); sampled spans are jaeger-client's own.
    """

    backend = "jaeger"

    def __init__(self, tracer: Any) -> None:
        super().__init__(tracer)
        import opentracing
        from jaeger_client import Span, SpanContext
        from jaeger_client.constants import DEBUG_FLAG, SAMPLED_FLAG

        self._noop_span = opentracing.Span
        self._span = Span
        self._context = SpanContext
        self._sampled_flag = SAMPLED_FLAG
        self._traced_flags = SAMPLED_FLAG | DEBUG_FLAG
        self._random = tracer.random.getrandbits
        self._trace_bits = tracer.max_trace_id_bits

    def start_span(self, operation: str, parent: Any, tags: Mapping[str, Any]) -> Any:
        if parent is None:
            trace_id = self._random(self._trace_bits)
            sampled, sampler_tags = self.tracer.sampler.is_sampled(trace_id, operation)
            context = self._context(
                trace_id=trace_id, span_id=self._random(64), parent_id=None,
                flags=self._sampled_flag if sampled else 0,
            )
            if not sampled:
                return self._noop_span(self.tracer, context)
            return self._span(context=context, tracer=self.tracer, operation_name=operation,
                              tags={**tags, **sampler_tags})
        if not parent.flags & self._traced_flags and not parent.debug_id:
            context = self._context(
                trace_id=parent.trace_id, span_id=self._random(64), parent_id=parent.span_id,
                flags=parent.flags, baggage=parent.baggage,
            )
            return self._noop_span(self.tracer, context)
        return self.tracer.start_span(operation, child_of=parent, tags=dict(tags))

    def is_recording(self, span: Any) -> bool:
        return isinstance(span, self._span) and bool(span.is_sampled())

    def extract(self, metadata: Mapping[str, str]) -> Any:
        if "uber-trace-id" not in metadata:
            return None  # jaeger-client would parse every key looking for baggage
        return super().extract(metadata)

    def trace_id(self, span: Any) -> str:
        return f"{span.context.trace_id:032x}"

    async def close(self, timeout: float = 5.0) -> None:
        import asyncio

        reporter = self.tracer.reporter
        io_loop = getattr(reporter, "io_loop", None)
        if io_loop is None:
            self.tracer.close()
            return
        done = threading.Event()

        def close_on_reporter_loop() -> None:
            # Run where the reporter's futures live: tornado's futures are not thread-safe.
            self.tracer.close().add_done_callback(lambda _: done.set())

        io_loop.add_callback(close_on_reporter_loop)
        if not await asyncio.to_thread(done.wait, timeout):
            logger.warning("tracing: the jaeger reporter did not flush within %.1f s", timeout)


class OpenTelemetryTracing(Tracing):
    backend = "otlp"

    def __init__(self, tracer: Any, provider: Any) -> None:
        super().__init__(tracer)
        self.provider = provider
        from opentelemetry.propagate import get_global_textmap

        self._fields = frozenset(get_global_textmap().fields)

    def extract(self, metadata: Mapping[str, str]) -> Any:
        if not any(key in metadata for key in self._fields):
            return None
        context = super().extract(metadata)
        if context is None or not context.unwrap().is_valid:
            return None
        return context

    def trace_id(self, span: Any) -> str:
        return f"{span.unwrap().get_span_context().trace_id:032x}"

    def is_recording(self, span: Any) -> bool:
        return bool(span.unwrap().is_recording())

    def record_error(self, span: Any, exc: BaseException) -> None:
        # OpenTelemetry's own exception event (an exception object is not an attribute value).
        from opentelemetry.trace import Status, StatusCode

        otel_span = span.unwrap()
        otel_span.record_exception(exc)
        otel_span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    async def close(self, timeout: float = 5.0) -> None:
        import asyncio

        def shutdown() -> None:
            self.provider.force_flush(int(timeout * 1000))
            self.provider.shutdown()

        try:
            await with_timeout(asyncio.to_thread(shutdown), timeout + 1)
        except TimeoutError:
            logger.warning("tracing: the span exporter did not flush within %.1f s", timeout)


class LogTracing(OpenTelemetryTracing):
    backend = "log"


def _completed(key: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options[key]`` (``REPORTER`` or ``OTLP``) over its defaults: options built by hand (a
    test, a factory of one's own calling these) may give only some keys, or none."""
    return {**_DEFAULTS[key], **(options.get(key) or {})}


def _host_port(value: Any, key: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ImproperlyConfigured(f'TRACING {key} must be "HOST:PORT", not {value!r}.')
    return host.strip("[]"), int(port)


def check_sampler(sampler: Any) -> tuple[str, float]:
    """Return the sampler's type and parameter, or raise ImproperlyConfigured."""
    if not isinstance(sampler, Mapping):
        raise ImproperlyConfigured(
            'TRACING["SAMPLER"] must be a dict such as {"type": "probabilistic", "param": 0.01}.'
        )
    default = _DEFAULTS["SAMPLER"]
    kind = sampler.get("type", default["type"])
    param = sampler.get("param", default["param"])
    if kind not in SAMPLER_TYPES:
        raise ImproperlyConfigured(
            f'TRACING["SAMPLER"]["type"] must be one of {", ".join(SAMPLER_TYPES)}, '
            f"not {kind!r}."
        )
    if isinstance(param, bool) or not isinstance(param, int | float):
        raise ImproperlyConfigured(f'TRACING["SAMPLER"]["param"] must be a number, not {param!r}.')
    if kind == "const" and param not in (0, 1):
        raise ImproperlyConfigured(
            'TRACING["SAMPLER"]["param"] of a "const" sampler is 1 (every trace) or 0 (none).'
        )
    if kind == "probabilistic" and not 0 <= param <= 1:
        raise ImproperlyConfigured(
            'TRACING["SAMPLER"]["param"] of a "probabilistic" sampler is a share between 0 and 1.'
        )
    if kind == "ratelimiting" and param < 0:
        raise ImproperlyConfigured(
            'TRACING["SAMPLER"]["param"] of a "ratelimiting" sampler is traces per second '
            "(>= 0)."
        )
    return kind, float(param)


def jaeger_tracing(service_name: str, options: Mapping[str, Any]) -> JaegerTracing:
    try:
        from jaeger_client import Config
    except ImportError as err:
        raise ImproperlyConfigured(
            f'TRACING["BACKEND"] = "jaeger" needs jaeger-client: '
            f'pip install "microframe-grpc[tracing]" ({err}).'
        ) from err
    kind, param = check_sampler(options["SAMPLER"])
    reporter = _completed("REPORTER", options)
    host, port = _host_port(
        reporter["LOCAL_AGENT_HOST_PORT"], 'REPORTER["LOCAL_AGENT_HOST_PORT"]'
    )
    config = Config(
        config={
            # jaeger-client reads a const sampler's param as a boolean: True, 1 or "1", not 1.0.
            "sampler": {"type": kind, "param": bool(param) if kind == "const" else param},
            "local_agent": {"reporting_host": host, "reporting_port": port},
            "generate_128bit_trace_id": True,
            "reporter_flush_interval": float(reporter["FLUSH_INTERVAL"]),
            "reporter_queue_size": int(reporter["QUEUE_SIZE"]),
            "tags": dict(options.get("TAGS") or {}),
            "logging": False,
        },
        service_name=service_name,
        validate=True,
    )
    return JaegerTracing(config.new_tracer())


class RateLimitingSampler:
    """At most ``rate`` new traces per second (a token bucket holding one second of them), for
    the OpenTelemetry SDK, which has no such sampler; Jaeger's ``ratelimiting`` semantics."""

    def __init__(self, rate: float) -> None:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

        self.rate = rate
        self._decision = Decision
        self._result = SamplingResult
        self._tokens = max(rate, 1.0)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._last) * self.rate)
            self._last = now
            take = self._tokens >= 1.0
            if take:
                self._tokens -= 1.0
        decision = self._decision.RECORD_AND_SAMPLE if take else self._decision.DROP
        return self._result(decision, attributes if take else None)

    def get_description(self) -> str:
        return f"RateLimitingSampler{{{self.rate}}}"


def _otel_sampler(sampler: Any) -> Any:
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    kind, param = check_sampler(sampler)
    root: Any
    if kind == "const":
        root = ALWAYS_ON if param else ALWAYS_OFF
    elif kind == "probabilistic":
        root = TraceIdRatioBased(param)
    else:
        root = RateLimitingSampler(param)
    return ParentBased(root)


class _LoggingSpanExporter:
    """Write each finished span as a line on ``microframe.tracing.spans`` (the ``log`` backend)."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("microframe.tracing.spans")

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            context = span.get_span_context()
            parent = f"{span.parent.span_id:016x}" if span.parent is not None else "-"
            attributes = " ".join(f"{k}={v}" for k, v in (span.attributes or {}).items())
            self.logger.info(
                "span %s trace=%032x span=%016x parent=%s %.2fms %s",
                span.name, context.trace_id, context.span_id, parent,
                ((span.end_time or 0) - (span.start_time or 0)) / 1e6, attributes,
                extra={"trace_id": f"{context.trace_id:032x}", "service": "-", "method": "-"},
            )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def otel_tracing(
    service_name: str, options: Mapping[str, Any], *, log: bool = False
) -> OpenTelemetryTracing:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.shim.opentracing_shim import create_tracer
    except ImportError as err:
        raise ImproperlyConfigured(
            f'TRACING["BACKEND"] = "{"log" if log else "otlp"}" needs the OpenTelemetry SDK: '
            f'pip install "microframe-grpc[tracing]" ({err}).'
        ) from err
    reporter = _completed("REPORTER", options)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, **dict(options.get("TAGS") or {})}),
        sampler=_otel_sampler(options["SAMPLER"]),
    )
    if log:
        exporter: Any = _LoggingSpanExporter()
    else:
        exporter = _otlp_exporter(_completed("OTLP", options))
    provider.add_span_processor(BatchSpanProcessor(
        exporter,
        max_queue_size=int(reporter["QUEUE_SIZE"]),
        schedule_delay_millis=float(reporter["FLUSH_INTERVAL"]) * 1000,
    ))
    cls = LogTracing if log else OpenTelemetryTracing
    return cls(create_tracer(provider), provider)


def _otlp_exporter(otlp: Mapping[str, Any]) -> Any:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    endpoint = str(otlp["ENDPOINT"])
    insecure = bool(otlp["INSECURE"])
    credentials = None
    if not insecure:
        ca = otlp.get("CA")
        try:
            root = open(ca, "rb").read() if ca else None
        except OSError as err:
            raise ImproperlyConfigured(f'TRACING["OTLP"]["CA"] cannot be read: {err}') from err
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    headers = {str(k).lower(): str(v) for k, v in (otlp.get("HEADERS") or {}).items()}
    return OTLPSpanExporter(
        endpoint=endpoint, insecure=insecure, credentials=credentials,
        headers=headers or None, timeout=float(otlp["TIMEOUT"]),
    )
