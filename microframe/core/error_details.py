"""Error details on the wire: a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer.

gRPC's rich error model (https://google.aip.dev/193): an error's status code and message are
repeated in a ``google.rpc.Status`` whose ``details`` are ``Any`` messages, usually those of
``google/rpc/error_details.proto`` (``ErrorInfo``, ``RetryInfo``, ``BadRequest``,
``QuotaFailure``, ``PreconditionFailure``, ``ResourceInfo``, ``Help``, ``LocalizedMessage``...).
Encoding and decoding the trailer is ``grpcio-status``'s (``rpc_status.to_status`` and
``rpc_status.from_call``); what is here packs and unpacks the details, and renders them as JSON
(the protobuf JSON mapping of ``google.rpc.Status``, as the gateway answers and ``call`` prints).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format, message_factory
from google.protobuf import descriptor_pool as _descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "DETAILS_KEY",
    "bad_request",
    "details_json",
    "details_of",
    "error_info",
    "retry_delay",
    "retry_info",
    "status_trailer",
]

logger = logging.getLogger("microframe.errors")

#: The trailer holding the serialized ``google.rpc.Status``.
DETAILS_KEY = "grpc-status-details-bin"

ErrorInfo = error_details_pb2.ErrorInfo
RetryInfo = error_details_pb2.RetryInfo
BadRequest = error_details_pb2.BadRequest


def error_info(
    reason: str, domain: str = "", metadata: Mapping[str, str] | None = None
) -> error_details_pb2.ErrorInfo:
    """Return a ``google.rpc.ErrorInfo``."""
    info = ErrorInfo(reason=reason, domain=domain)
    if metadata:
        info.metadata.update({str(k): str(v) for k, v in metadata.items()})
    return info


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """Return a ``google.rpc.RetryInfo`` asking the caller to wait ``seconds`` before retrying."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(seconds * 1e9)))
    return RetryInfo(retry_delay=delay)


def bad_request(violations: Iterable[tuple[str, str]]) -> error_details_pb2.BadRequest:
    """Return a ``google.rpc.BadRequest`` of ``(field path, description)`` pairs."""
    return BadRequest(
        field_violations=[
            BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )


def _packed(detail: Any) -> any_pb2.Any:
    if isinstance(detail, any_pb2.Any):
        return detail
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def status_trailer(
    code: grpc.StatusCode, message: str, details: Sequence[Any]
) -> tuple[str, bytes]:
    """The ``grpc-status-details-bin`` trailer of an error (``grpcio-status``'s encoding)."""
    status = status_pb2.Status(
        code=code.value[0], message=message, details=[_packed(d) for d in details]
    )
    ((key, value),) = rpc_status.to_status(status).trailing_metadata
    return key, value


def _unpacked(detail: any_pb2.Any) -> Any:
    """The message inside ``detail``, or ``detail`` itself when its type is not known here."""
    name = detail.TypeName()
    try:
        descriptor = _descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return detail
    message = message_factory.GetMessageClass(descriptor)()
    return message if detail.Unpack(message) else detail


def details_of(call: Any) -> tuple[Any, ...]:
    """The details of a failed call (``grpc.RpcError``, ``grpc.aio.AioRpcError``), decoded:
    messages of known types, ``Any`` for the others; ``()`` without the trailer, or when the
    trailer's code or message differ from the call's (it does not describe this error)."""
    try:
        status = rpc_status.from_call(call)
    except ValueError as err:
        logger.debug("error details ignored: %s", err)
        return ()
    except Exception as err:  # a trailer that is not a google.rpc.Status
        logger.debug("malformed error details ignored: %s", err)
        return ()
    if status is None:
        return ()
    return tuple(_unpacked(detail) for detail in status.details)


def retry_delay(details: Sequence[Any]) -> float | None:
    """The seconds a ``RetryInfo`` among ``details`` asks the caller to wait, if any."""
    for detail in details:
        if isinstance(detail, RetryInfo):
            return max(0.0, detail.retry_delay.ToNanoseconds() / 1e9)
    return None


def _detail_json(detail: Any) -> dict[str, Any]:
    packed = _packed(detail)
    try:
        return json_format.MessageToDict(packed, preserving_proto_field_name=False)
    except (TypeError, KeyError):  # a type this process has no descriptor of
        import base64

        return {"@type": packed.type_url, "value": base64.b64encode(packed.value).decode()}


def details_json(details: Sequence[Any]) -> list[dict[str, Any]]:
    """``details`` in the protobuf JSON mapping (each with its ``@type``)."""
    return [_detail_json(detail) for detail in details]
