"""gRPC status codes as HTTP statuses, and the JSON error body of the gateway.

The mapping is Google's (``google.rpc.Code``, as grpc-gateway and Envoy's transcoder apply it).
The body is the JSON mapping of the error's ``google.rpc.Status``, as grpc-gateway answers it,
with the code's name beside: ``{"code": <gRPC code>, "status": "<CODE NAME>", "message": "...",
"details": [{"@type": "type.googleapis.com/google.rpc.BadRequest", ...}]}``, ``details`` only
when the error has some.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import grpc

from microframe.core.error_details import details_json

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def status_line(http_status: int) -> str:
    """Return the status line of ``http_status`` ("404 Not Found"; "204 No Content")."""
    reason = REASONS.get(http_status)
    if reason is None:
        try:
            reason = HTTPStatus(http_status).phrase
        except ValueError:
            reason = "Error"
    return f"{http_status} {reason}"


def retry_after_header(seconds: float) -> str:
    """Return a wait of ``seconds`` as HTTP's ``Retry-After``: whole seconds, rounded up, at
    least 1 (a wait shorter than a second must not read as "retry now")."""
    return str(max(1, math.ceil(seconds)))


def error_body(
    code: grpc.StatusCode, message: str, details: Sequence[Any] = ()
) -> dict[str, object]:
    """Return the JSON error body of an error (see the module)."""
    body: dict[str, object] = {"code": code.value[0], "status": code.name, "message": message}
    if details:
        body["details"] = details_json(details)
    return body


def error_json(code: grpc.StatusCode, message: str, details: Sequence[Any] = ()) -> bytes:
    """Return :func:`error_body` encoded."""
    return json.dumps(error_body(code, message, details)).encode()
