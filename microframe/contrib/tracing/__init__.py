"""The tracing battery: a span per RPC served and per call made, across services.

Turn it on in settings (needs ``pip install "microframe-grpc[tracing]"``)::

    TRACING = {
        "ENABLED": True,
        "BACKEND": "jaeger",                       # or "otlp", or "log"
        "SAMPLER": {"type": "probabilistic", "param": 0.01},
        "REPORTER": {"LOCAL_AGENT_HOST_PORT": "jaeger-agent:6831"},
    }

``TracingMiddleware`` (in the default ``MIDDLEWARE``) starts a server span for every RPC, as a
child of the caller's span when the call carries one, and hands it to the controller as
``ctx.span`` (the opentracing API: ``ctx.span.set_tag(...)``, ``ctx.span.log_kv(...)``);
``ClientTracingMiddleware`` (in the default ``CLIENT_MIDDLEWARE``) starts a client span for
every call made with the client library, as a child of ``ctx.span``, and sends its context in
the call's metadata. The trace id of the span is the request's trace id: the one in every log
line and access line of the call.

The tracer is built once per process, on first use, and flushed and closed when the server has
stopped (the ``server_stopped`` signal).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from microframe.conf import global_settings

if TYPE_CHECKING:
    from microframe.contrib.tracing.tracers import Tracing

#: The defaults of ``TRACING`` (``global_settings.TRACING``).
DEFAULTS: dict[str, Any] = global_settings.TRACING

_lock = threading.Lock()
_tracing: Tracing | None = None
_disabled = object()


def tracing_options() -> dict[str, Any]:
    """``TRACING`` over its defaults (``REPORTER`` and ``OTLP`` merged key by key)."""
    from microframe.conf import settings

    configured = getattr(settings, "TRACING", None) or {}
    options = {**DEFAULTS, **configured}
    for key in ("REPORTER", "OTLP"):
        options[key] = {**DEFAULTS[key], **(configured.get(key) or {})}
    return options


def build_tracing(options: dict[str, Any], service_name: str) -> Tracing:
    """Build the :class:`Tracing` of ``options`` (``TRACING`` over its defaults)."""
    from microframe.contrib.tracing.tracers import jaeger_tracing, otel_tracing
    from microframe.core.exceptions import ImproperlyConfigured
    from microframe.utils.module_loading import import_string

    name = options.get("SERVICE_NAME") or service_name
    backend = options.get("BACKEND")
    if backend == "jaeger":
        return jaeger_tracing(name, options)
    if backend == "otlp":
        return otel_tracing(name, options)
    if backend == "log":
        return otel_tracing(name, options, log=True)
    if isinstance(backend, str) and "." in backend:
        try:
            factory = import_string(backend)
        except ImportError as err:
            raise ImproperlyConfigured(
                f'TRACING["BACKEND"] {backend!r} cannot be imported: {err}'
            ) from err
        return factory(name, options)  # type: ignore[no-any-return]
    raise ImproperlyConfigured(
        'TRACING["BACKEND"] must be "jaeger", "otlp", "log" or the dotted path of a factory, '
        f"not {backend!r}."
    )


def get_tracing() -> Tracing | None:
    """The process's tracing (built on the first call), or None when ``TRACING`` is off."""
    global _tracing
    if _tracing is None:
        with _lock:
            if _tracing is None:
                from microframe.conf import settings
                from microframe.core.signals import server_stopped

                options = tracing_options()
                if not options.get("ENABLED"):
                    return None
                _tracing = build_tracing(options, settings.SERVICE_NAME)
                # Connected by the battery's ready() too; here for a program that serves
                # without microframe.setup() (connecting twice connects once).
                server_stopped.connect(_close_on_stop, weak=False)
    return _tracing


async def close_tracing(timeout: float = 5.0) -> None:
    """Flush the spans buffered (up to ``timeout`` seconds) and close the tracer; the next
    :func:`get_tracing` builds a new one."""
    global _tracing
    with _lock:
        tracing, _tracing = _tracing, None
    if tracing is not None:
        await tracing.close(timeout)


async def _close_on_stop(sender: Any = None, **kwargs: Any) -> None:
    await close_tracing()


def connect() -> None:
    """Connect the battery's receivers (its ``ready()``): the tracer is flushed and closed
    when a server has stopped (``server_stopped``); a tracer not built yet is not built."""
    from microframe.core.signals import server_stopped

    server_stopped.connect(_close_on_stop, weak=False)


def _reset(**kwargs: Any) -> None:
    """Forget the tracer when ``TRACING`` changes (``override_settings`` in tests)."""
    global _tracing
    if kwargs.get("setting") in ("TRACING", "SERVICE_NAME"):
        _tracing = None


def _connect_reset() -> None:
    from microframe.core.signals import setting_changed

    setting_changed.connect(_reset, weak=False)


_connect_reset()

__all__ = ["Tracing", "get_tracing", "close_tracing", "tracing_options", "build_tracing"]


def __getattr__(name: str) -> Any:
    """``Tracing``, imported when asked for: loading the battery does not import the tracers
    (and the tracing libraries behind them)."""
    if name == "Tracing":
        from microframe.contrib.tracing.tracers import Tracing

        return Tracing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
