"""What middleware needs to follow a call to its end: its status code, and its response stream.

A unary call ends when the next handler returns or raises. A server-streaming call ends later,
when its response stream is exhausted, fails, or is dropped because the caller went away:
:class:`ObservedResponses` wraps that stream and reports the end once, with the status code the
call was answered with (metrics, the access log and tracing all use it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from microframe.core.handlers import status_of

_AbortError = grpc.aio.AbortError
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

#: ``on_end(code, exc)``: the call ended with ``code``; ``exc`` is the exception, if any.
OnEnd = Callable[[grpc.StatusCode, BaseException | None], Any]


def status_code_of(exc: BaseException, grpc_context: Any = None) -> grpc.StatusCode:
    """Return the status code a call failing with ``exc`` is answered with.

    A ``grpc.aio.AbortError`` (raised by ``context.abort()``) carries no code: it is read from
    ``grpc_context`` (the ``grpc.aio.ServicerContext``) when given, else UNKNOWN. Anything
    else is mapped by :func:`microframe.core.handlers.status_of`.
    """
    if isinstance(exc, _AbortError):
        if grpc_context is None:
            return _UNKNOWN
        try:
            code = grpc_context.code()
        except Exception:
            return _UNKNOWN
        if isinstance(code, grpc.StatusCode):
            return code
        if isinstance(code, int):
            return _CODES_BY_VALUE.get(code, _UNKNOWN)
        return _UNKNOWN
    return status_of(exc)


class ObservedResponses:
    """The response stream of a server-streaming call, followed by a middleware.

    ``on_message(message)`` is called for every message sent; ``on_end(code, exc)`` once, when
    the stream ends: OK when it is exhausted, the exception's code when it fails, CANCELLED
    when it is closed or dropped before its end (the caller went away).
    """

    __slots__ = ("_stream", "_grpc", "_on_end", "_on_message", "_done", "_loop")

    def __init__(
        self,
        stream: Any,
        grpc_context: Any,
        on_end: OnEnd,
        on_message: Callable[[Any], Any] | None = None,
    ) -> None:
        self._grpc = grpc_context
        self._on_end = on_end
        self._on_message = on_message
        self._done = False
        self._loop = asyncio.get_running_loop()
        try:
            self._stream: AsyncIterator[Any] = stream.__aiter__()
        except BaseException as exc:
            self._finish(status_code_of(exc, grpc_context), exc)
            raise

    def _finish(self, code: grpc.StatusCode, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._on_end(code, exc)

    def __aiter__(self) -> ObservedResponses:
        return self

    async def __anext__(self) -> Any:
        try:
            message = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finish(_OK, None)
            raise
        except BaseException as exc:
            self._finish(status_code_of(exc, self._grpc), exc)
            raise
        if self._on_message is not None:
            self._on_message(message)
        return message

    async def aclose(self) -> None:
        self._finish(_CANCELLED, None)
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        # Dropped before its end. The garbage collector may run this while a lock the callback
        # takes (a metric's) is held by the same thread, so the callback is left to the event
        # loop (as asyncio does to finalize async generators).
        if not self._done:
            self._done = True
            try:
                self._loop.call_soon_threadsafe(self._on_end, _CANCELLED, None)
            except Exception:  # the loop is closed: nothing is left to record into
                pass


class CountedRequests:
    """The request stream of a client-streaming call, calling ``on_message`` for each message."""

    __slots__ = ("_stream", "_on_message")

    def __init__(self, stream: Any, on_message: Callable[[Any], Any]) -> None:
        self._stream = stream.__aiter__()
        self._on_message = on_message

    def __aiter__(self) -> CountedRequests:
        return self

    async def __anext__(self) -> Any:
        message = await self._stream.__anext__()
        self._on_message(message)
        return message

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()
