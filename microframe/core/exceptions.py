"""Exceptions of the framework and the status-carrying errors handlers raise.

A handler raises one of the :class:`RpcError` subclasses (``NotFound``, ``InvalidArgument``...)
and the server answers with its status code and message, and with its ``details`` (messages
such as ``google.rpc.BadRequest``, ``ErrorInfo`` or ``RetryInfo``) in a ``google.rpc.Status``
in the ``grpc-status-details-bin`` trailer (:mod:`microframe.core.error_details`). Any other
exception becomes ``INTERNAL`` with a generic message; its traceback is logged, never sent to
the caller. :func:`status_of` is that mapping, the one the method handlers answer with and the
middleware record; :data:`HANDLED_TRAILER` marks the answers of calls whose handler ran.

A service declares its own errors once, as subclasses with a ``reason`` (and a ``domain``)::

    class OrderNotFound(NotFound):
        reason = "ORDER_NOT_FOUND"
        domain = "orders.example.com"

Raised by a controller, such an error carries a ``google.rpc.ErrorInfo`` with that reason and
domain; a microframe client receiving it raises the same class again (:func:`declared_error`),
so a caller catches ``OrderNotFound`` as the server raised it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

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


#: A trailer's value: text, or bytes for a key ending in ``-bin``.
TrailerValue = str | bytes
Trailers = Mapping[str, TrailerValue] | Sequence[tuple[str, TrailerValue]]


class RpcError(Exception):
    """An error answered to the caller with a gRPC status code.

    ``trailers`` (a mapping or a sequence of pairs) are sent as trailing metadata.
    ``details`` are protobuf messages (``google.rpc.BadRequest``, ``ErrorInfo``,
    ``RetryInfo``, ``QuotaFailure``, ``PreconditionFailure``, ``ResourceInfo``, ``Help``,
    ``LocalizedMessage``, or any message of the service's own) sent in a ``google.rpc.Status``
    in the ``grpc-status-details-bin`` trailer; a microframe client decodes them back into
    ``details``. ``metadata`` goes into the ``ErrorInfo`` of a declared error (a subclass with
    a ``reason``).

    ``reason``, ``domain`` and ``error_metadata`` of an instance come from its ``ErrorInfo``
    detail, when it has one.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_message: str = "unknown error"
    #: Set on a subclass to declare an error of the service's own: the ``ErrorInfo`` reason
    #: (UPPER_SNAKE_CASE, unique within its domain) every instance carries.
    reason: str | None = None
    #: The ``ErrorInfo`` domain of a declared error (e.g. the service's DNS name).
    domain: str = ""
    _declared: ClassVar[dict[tuple[str, str], type[RpcError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" in cls.__dict__ and cls.reason:
            RpcError._declared[(cls.domain, cls.reason)] = cls

    def __init__(
        self,
        message: str | None = None,
        *,
        trailers: Trailers | None = None,
        details: Sequence[Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message if message is not None else self.default_message
        if isinstance(trailers, Mapping):
            trailers = tuple(trailers.items())
        self.trailers: tuple[tuple[str, TrailerValue], ...] = tuple(trailers or ())
        found = tuple(details or ())
        info = _error_info(found)
        cls = type(self)
        if info is None and cls.reason:
            from microframe.core.error_details import error_info

            info = error_info(cls.reason, cls.domain, metadata)
            found = (info, *found)
        self.details: tuple[Any, ...] = found
        if info is not None:
            self.reason = info.reason
            self.domain = info.domain
        self.error_metadata: dict[str, str] = dict(info.metadata) if info is not None else {}
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def wire_trailers(self) -> tuple[tuple[str, TrailerValue], ...]:
        """The trailers to answer with: ``trailers``, and the details' ``google.rpc.Status``."""
        if not self.details:
            return self.trailers
        from microframe.core.error_details import DETAILS_KEY, status_trailer

        kept = tuple(pair for pair in self.trailers if pair[0] != DETAILS_KEY)
        return (*kept, status_trailer(self.code, self.message, self.details))


def _error_info(details: Sequence[Any]) -> Any:
    for detail in details:
        if getattr(detail, "DESCRIPTOR", None) is not None and (
            detail.DESCRIPTOR.full_name == "google.rpc.ErrorInfo"
        ):
            return detail
    return None


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
    trailers: Trailers | None = None,
    details: Sequence[Any] | None = None,
) -> RpcError:
    """Return the :class:`RpcError` of ``code`` (``Unavailable`` for UNAVAILABLE...), or the
    declared error its ``ErrorInfo`` detail names (:func:`declared_error`)."""
    cls = declared_error(code, details) if details else None
    if cls is None:
        cls = _BY_CODE.get(code, Unknown)
    return cls(message, trailers=trailers, details=details)


def declared_error(code: grpc.StatusCode, details: Sequence[Any]) -> type[RpcError] | None:
    """The declared error class (a subclass with a ``reason``) that ``details``' ``ErrorInfo``
    names by domain and reason, when this process has imported it and its code is ``code``."""
    info = _error_info(details)
    if info is None:
        return None
    cls = RpcError._declared.get((info.domain, info.reason))
    return cls if cls is not None and cls.code == code else None


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
