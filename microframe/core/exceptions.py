"""Exceptions of the framework and the status-carrying errors handlers raise.

A handler raises one of the :class:`RpcError` subclasses (``NotFound``, ``InvalidArgument``...)
and the server answers with its status code and message. Any other exception becomes
``INTERNAL`` with a generic message; its traceback is logged, never sent to the caller.
:func:`status_of` is that mapping, the one the method handlers answer with and the middleware
record; :data:`HANDLED_TRAILER` marks the answers of calls whose handler ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

#: Trailer of a call whose handler ran (an error it raised, or a call cut by a stop): a
#: client can tell "UNAVAILABLE from a handler" from "UNAVAILABLE, the call never got in", and
#: retries only the second (microframe.client.middleware.is_retryable).
HANDLED_TRAILER = ("x-microframe-handled", "1")


class ImproperlyConfigured(Exception):
    """The settings are broken (a missing module, a bad value, an unreadable YAML file)."""


class MiddlewareNotUsed(Exception):
    """Raised by a middleware factory at build time to take itself out of the chain."""


class RpcError(Exception):
    """An error answered to the caller with a gRPC status code.

    ``trailers`` (a mapping or a sequence of pairs) are sent as trailing metadata.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_message: str = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        *,
        trailers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.message = message if message is not None else self.default_message
        if isinstance(trailers, Mapping):
            trailers = tuple(trailers.items())
        self.trailers: tuple[tuple[str, str], ...] = tuple(trailers or ())
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _error(name: str, code: grpc.StatusCode, message: str) -> type[RpcError]:
    attributes = {"code": code, "default_message": message, "__doc__": f"Answer {code.name}."}
    return type(name, (RpcError,), attributes)


Cancelled = _error("Cancelled", grpc.StatusCode.CANCELLED, "cancelled")
Unknown = _error("Unknown", grpc.StatusCode.UNKNOWN, "unknown error")
InvalidArgument = _error(
    "InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"
)
DeadlineExceeded = _error(
    "DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
)
NotFound = _error("NotFound", grpc.StatusCode.NOT_FOUND, "not found")
AlreadyExists = _error("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS, "already exists")
PermissionDenied = _error(
    "PermissionDenied", grpc.StatusCode.PERMISSION_DENIED, "permission denied"
)
ResourceExhausted = _error(
    "ResourceExhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, "resource exhausted"
)
FailedPrecondition = _error(
    "FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"
)
Aborted = _error("Aborted", grpc.StatusCode.ABORTED, "aborted")
OutOfRange = _error("OutOfRange", grpc.StatusCode.OUT_OF_RANGE, "out of range")
Unimplemented = _error("Unimplemented", grpc.StatusCode.UNIMPLEMENTED, "unimplemented")
Internal = _error("Internal", grpc.StatusCode.INTERNAL, "internal error")
Unavailable = _error("Unavailable", grpc.StatusCode.UNAVAILABLE, "unavailable")
DataLoss = _error("DataLoss", grpc.StatusCode.DATA_LOSS, "data loss")
Unauthenticated = _error("Unauthenticated", grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")

_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.code: cls
    for cls in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated,
    )
}


def error_for(
    code: grpc.StatusCode,
    message: str | None = None,
    trailers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
) -> RpcError:
    """Return the :class:`RpcError` subclass instance of ``code`` (``Unavailable`` for
    UNAVAILABLE...)."""
    return _BY_CODE.get(code, Unknown)(message, trailers=trailers)


_AbortError = grpc.aio.AbortError
_CancelledError = asyncio.CancelledError
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_of(exc: BaseException, grpc_context: Any = None) -> grpc.StatusCode:
    """Return the status code a call failing with ``exc`` is answered with.

    An :class:`RpcError` is answered with its code, a cancellation is CANCELLED (the caller
    went away, its deadline passed, or a stop cut the call), anything else INTERNAL. A
    ``grpc.aio.AbortError`` (raised by ``context.abort()``) carries no code: it is read from
    ``grpc_context`` (the ``grpc.aio.ServicerContext``) when given, else UNKNOWN.
    """
    if isinstance(exc, RpcError):
        return exc.code
    if isinstance(exc, _CancelledError):
        return grpc.StatusCode.CANCELLED
    if not isinstance(exc, _AbortError):
        return grpc.StatusCode.INTERNAL
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
