"""``AccessLogMiddleware``: one line per call, written when the call ends.

On the ``microframe.access`` logger, at INFO::

    2026-11-25 10:00:00,123 INFO 4242 microframe.access [3f2a... helloworld.Greeter SayHello]
    /helloworld.Greeter/SayHello OK 0.41ms peer=ipv4:127.0.0.1:50412 in=7B out=15B user_id=42
    md.user-agent="grpc-python/1.85"

(one line, wrapped here).

- the method, the status code, the duration, the caller's address, the request and response
  sizes (every message of a stream counted);
- every ``ctx.add_field(key, value)`` the controller (or a middleware) made during the call:
  the seed's AddField, one line per call instead of one line per fact;
- ``color=canary`` and ``stress=1`` on the calls of colored and load-test traffic
  (``x-md-global-color``, ``PROPAGATION["STRESS_KEY"]``: :mod:`microframe.core.propagation`);
- the request's metadata when ``ACCESS_LOG["METADATA"]`` says so (True for every key, a list
  for some; False, the default, for none), where the values of ``ACCESS_LOG["REDACTED"]``
  keys (authorization, cookie, API keys...) and of binary (``-bin``) keys are replaced by
  ``[REDACTED]``: never written.

With ``LOG["FORMAT"] = "json"`` the same facts are separate keys: ``code``, ``duration_ms``,
``peer``, ``request_bytes``, ``response_bytes``, ``fields``, ``metadata``, and ``color`` and
``stress`` when the call has them.

The line is written through the logging battery's queue: the call never waits on the disk.
Set ``ACCESS_LOG["ENABLED"] = False``, or the logger's level above INFO, to turn it off (then it
costs one level check per call).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from microframe.conf import global_settings, settings
from microframe.core.context import RequestContext
from microframe.core.exceptions import MiddlewareNotUsed, RpcError, status_of
from microframe.core.middleware import Handler
from microframe.core.propagation import COLOR_KEY, is_stress, log_token, stress_key
from microframe.core.router import Route
from microframe.core.streams import CountedMessages

ACCESS_LOGGER = "microframe.access"
REDACTED = "[REDACTED]"
DEFAULTS: dict[str, Any] = global_settings.ACCESS_LOG
_INFO = logging.INFO
_perf_counter = time.perf_counter
_time = time.time
_get_ident = threading.get_ident
_OK = grpc.StatusCode.OK


def access_log_options() -> dict[str, Any]:
    """``ACCESS_LOG`` over its defaults."""
    return {**DEFAULTS, **(getattr(settings, "ACCESS_LOG", None) or {})}


class MetadataFilter:
    """Which metadata keys an access line shows, and which values it hides."""

    __slots__ = ("keys", "redacted")

    def __init__(self, metadata: bool | list[str], redacted: list[str]) -> None:
        self.keys: frozenset[str] | bool = (
            frozenset(k.lower() for k in metadata)
            if isinstance(metadata, list | tuple)
            else bool(metadata)
        )
        self.redacted = frozenset(k.lower() for k in redacted)

    def __call__(self, metadata: dict[str, str]) -> dict[str, str]:
        keys = self.keys
        if keys is False:
            return {}
        shown = {}
        for key, value in metadata.items():
            if keys is not True and key not in keys:  # type: ignore[operator]
                continue
            shown[key] = REDACTED if key in self.redacted or key.endswith("-bin") else value
        return shown


class _RecordFactory:
    """Access-log records without ``Logger.info``'s per-call work: the logging module would look
    up the caller's frame and compute a dozen attributes that are the same for every access
    line (path, module, process...). They are computed once here; a record costs a dict copy
    and the clock. The records are ordinary ``LogRecord`` objects with every standard
    attribute, so filters, handlers and formatters see nothing different."""

    def __init__(self, logger: logging.Logger) -> None:
        import os

        self.logger = logger
        template = vars(logging.LogRecord(logger.name, _INFO, __file__, 0, "", None, None, "write"))
        per_record = ("created", "msecs", "relativeCreated")
        self.template = {k: v for k, v in template.items() if k not in per_record}
        self.template["process"] = os.getpid()
        self._new = logging.LogRecord.__new__
        self._start = logging._startTime  # type: ignore[attr-defined]

    def __call__(self, message: str, extra: dict[str, Any]) -> logging.LogRecord:
        record = self._new(logging.LogRecord)
        attributes = record.__dict__
        attributes.update(self.template)
        now = _time()
        attributes["created"] = now
        attributes["msecs"] = (now - int(now)) * 1000
        attributes["relativeCreated"] = (now - self._start) * 1000
        attributes["thread"] = _get_ident()
        attributes["msg"] = message
        attributes.update(extra)
        return record


def _quoted(value: str) -> str:
    """A metadata value in double quotes, its own quotes and backslashes escaped (JSON's
    escapes): a caller's value cannot close the quotes and forge fields of the line."""
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    import json

    return json.dumps(value)


def _size(message: Any) -> int:
    try:
        return int(message.ByteSize())
    except Exception:
        return 0


class _Sizes:
    """Bytes received and sent by a streaming call."""

    __slots__ = ("received", "sent")

    def __init__(self, received: int = 0) -> None:
        self.received = received
        self.sent = 0

    def add_received(self, message: Any) -> None:
        self.received += _size(message)

    def add_sent(self, message: Any) -> None:
        self.sent += _size(message)


class AccessLogMiddleware:
    """Write one access line per call (see the module's documentation)."""

    __slots__ = (
        "next",
        "logger",
        "record",
        "full_method",
        "metadata",
        "client_streaming",
        "server_streaming",
        "stress_key",
    )

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        options = access_log_options()
        if not options["ENABLED"]:
            raise MiddlewareNotUsed
        self.next = next
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.record = _RecordFactory(self.logger)
        self.full_method = route.full_method if route is not None else "-"
        self.metadata = MetadataFilter(options["METADATA"], list(options["REDACTED"] or ()))
        self.client_streaming = bool(route and route.kind.client_streaming)
        self.server_streaming = bool(route and route.kind.server_streaming)
        self.stress_key = stress_key()

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        if not self.logger.isEnabledFor(_INFO):
            return await self.next(ctx, request)
        start = _perf_counter()
        if self.client_streaming:
            sizes = _Sizes()
            request = CountedMessages(request, sizes.add_received)
        else:
            sizes = _Sizes(_size(request))
        if self.server_streaming:
            # Written when the method handler says the call ended, whatever ends it.
            ctx.on_end(lambda code, exc: self.write(ctx, code, start, sizes, exc))
            return CountedMessages(await self.next(ctx, request), sizes.add_sent)
        try:
            response = await self.next(ctx, request)
        except BaseException as exc:
            self.write(ctx, status_of(exc, ctx.grpc), start, sizes, exc)
            raise
        sizes.sent = _size(response)
        self.write(ctx, _OK, start, sizes, None)
        return response

    def request_failed(
        self, ctx: RequestContext, code: grpc.StatusCode, exc: BaseException
    ) -> None:
        """Write the line of a call whose request could not be read (it ended before the
        chain), as for any other call."""
        if self.logger.isEnabledFor(_INFO):
            self.write(ctx, code, ctx.start, _Sizes(), exc)

    def write(
        self,
        ctx: RequestContext,
        code: grpc.StatusCode,
        start: float,
        sizes: _Sizes,
        exc: BaseException | None,
    ) -> None:
        """Write the line of a call that ended with ``code``."""
        duration_ms = (_perf_counter() - start) * 1000
        try:
            peer = ctx.peer
        except Exception:
            peer = "-"
        fields = ctx.fields
        received = ctx.metadata
        metadata = self.metadata(received) if self.metadata.keys is not False else {}
        extra: dict[str, Any] = {
            "code": code.name,
            "duration_ms": round(duration_ms, 3),
            "peer": peer,
            "request_bytes": sizes.received,
            "response_bytes": sizes.sent,
            "fields": fields,
            "metadata": metadata,
        }
        tail = ""
        if fields:
            tail += "".join(f" {key}={value}" for key, value in fields.items())
        failed = exc is not None and not isinstance(exc, RpcError)
        if failed and code is not grpc.StatusCode.CANCELLED:
            extra["error"] = type(exc).__name__
            tail += f" error={type(exc).__name__}"
        color = received.get(COLOR_KEY)
        if color:
            extra["color"] = color
            tail += f" color={log_token(color)}"
        if is_stress(received.get(self.stress_key)):
            extra["stress"] = True
            tail += " stress=1"
        if metadata:
            tail += "".join(f" md.{key}={_quoted(value)}" for key, value in metadata.items())
        # One f-string, no %-arguments left for the logging module to merge.
        self.logger.handle(self.record(
            f"{self.full_method} {code.name} {duration_ms:.2f}ms peer={peer} "
            f"in={sizes.received}B out={sizes.sent}B{tail}",
            extra,
        ))
