"""Exceptions of the framework and the status-carrying errors handlers raise.

A handler raises one of the :class:`RpcError` subclasses (``NotFound``, ``InvalidArgument``...)
and the server answers with its status code and message. Any other exception becomes
``INTERNAL`` with a generic message; its traceback is logged, never sent to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc


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
    return type(name, (RpcError,), {"code": code, "default_message": message, "__doc__": f"Answer {code.name}."})


Cancelled = _error("Cancelled", grpc.StatusCode.CANCELLED, "cancelled")
Unknown = _error("Unknown", grpc.StatusCode.UNKNOWN, "unknown error")
InvalidArgument = _error("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT, "invalid argument")
DeadlineExceeded = _error("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
NotFound = _error("NotFound", grpc.StatusCode.NOT_FOUND, "not found")
AlreadyExists = _error("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS, "already exists")
PermissionDenied = _error("PermissionDenied", grpc.StatusCode.PERMISSION_DENIED, "permission denied")
ResourceExhausted = _error("ResourceExhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, "resource exhausted")
FailedPrecondition = _error("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION, "failed precondition")
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
    """Return the :class:`RpcError` subclass instance of ``code`` (``Unavailable`` for UNAVAILABLE...)."""
    return _BY_CODE.get(code, Unknown)(message, trailers=trailers)
