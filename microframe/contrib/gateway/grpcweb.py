"""gRPC-Web on the gateway: browsers calling the service's RPCs directly.

The protocol is gRPC's own (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md) over
HTTP/1.1: ``POST /<package.Service>/<Method>`` with ``Content-Type: application/grpc-web``
(``+proto``, ``+json``) or ``application/grpc-web-text`` (the same, base64), the body the
length-prefixed messages, metadata as headers and the deadline as ``grpc-timeout``. The answer
is 200 with the reply messages, each length-prefixed, then the trailers as the body's last
frame (flag ``0x80``: ``grpc-status``, ``grpc-message``, ``grpc-status-details-bin``...);
an error before any reply is also given as headers (a trailers-only answer), so a client that
reads only headers sees it.

Unary and server-streaming RPCs are what browsers can call (a fetch body is sent whole); a
client-streaming RPC takes the frames of the body as its request stream. The calls go through
the client chain as the JSON routes' do, with the same limits (``MAX_BODY_BYTES``,
``MAX_STREAM_MESSAGES``), the same rules on which headers pass as metadata and the same
messages kept from HTTP callers.

Framing and the base64 text form are a few lines over the standard library, so they are
written here: the Python gRPC-Web packages on PyPI (``sonora``...) are servers of their own.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

import grpc

#: Content types of gRPC-Web requests: (text form, codec).
CONTENT_TYPES: dict[str, tuple[bool, str]] = {
    "application/grpc-web": (False, "proto"),
    "application/grpc-web+proto": (False, "proto"),
    "application/grpc-web+json": (False, "json"),
    "application/grpc-web-text": (True, "proto"),
    "application/grpc-web-text+proto": (True, "proto"),
    "application/grpc-web-text+json": (True, "json"),
}
TRAILER_FLAG = 0x80
COMPRESSED_FLAG = 0x01
_HEADER = struct.Struct(">BI")
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_BASE64_CHUNK = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=+")

#: Headers a browser or an HTTP stack sets that are no metadata of the call.
NOT_METADATA = frozenset({
    "accept", "accept-encoding", "accept-language", "cache-control", "pragma", "origin",
    "referer", "user-agent", "x-user-agent", "x-grpc-web", "content-length", "dnt", "priority",
    "grpc-timeout", "grpc-accept-encoding", "grpc-encoding", "x-forwarded-for",
    "connect-protocol-version", "connect-timeout-ms",
    # What proxies say about the request: the gateway's business, not the caller's to set.
    "forwarded", "x-real-ip", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "via",
})


class GrpcWebError(Exception):
    """A request the gateway refuses before calling: answered as a gRPC-Web error."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def content_type(environ: dict[str, Any]) -> str | None:
    """The gRPC-Web content type of ``environ``'s request (parameters dropped), or None."""
    value = str(environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
    return value if value in CONTENT_TYPES else None


def timeout_of(header: str | None) -> float | None:
    """A ``grpc-timeout`` header (``"1500m"``) in seconds; GrpcWebError when malformed."""
    if not header:
        return None
    found = _TIMEOUT.match(header.strip())
    if found is None:
        raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT, f"bad grpc-timeout {header!r}")
    return int(found.group(1)) * _UNITS[found.group(2)]


def decode_text(data: bytes) -> bytes:
    """The bytes of a ``grpc-web-text`` body: base64, maybe several padded chunks end to end."""
    compact = b"".join(data.split())
    out = []
    position = 0
    for chunk in _BASE64_CHUNK.finditer(compact):
        if chunk.start() != position:
            break
        position = chunk.end()
        piece = chunk.group()
        if piece.strip(b"="):
            try:
                out.append(base64.b64decode(piece + b"=" * (-len(piece) % 4)))
            except binascii.Error:  # a chunk of 4n+1 characters: no base64 at all
                raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "the body is not base64") from None
    if position != len(compact):
        raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not base64")
    return b"".join(out)


def frames(data: bytes, max_messages: int) -> list[bytes]:
    """The messages of a request body; GrpcWebError for a truncated or compressed frame, or
    more than ``max_messages``."""
    messages: list[bytes] = []
    position = 0
    while position < len(data):
        if len(data) - position < _HEADER.size:
            raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT, "a truncated message frame")
        flag, length = _HEADER.unpack_from(data, position)
        position += _HEADER.size
        if flag & TRAILER_FLAG:
            raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT, "a request has no trailers")
        if flag & ~COMPRESSED_FLAG:
            raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT, f"a frame flag of {flag:#04x}")
        if flag & COMPRESSED_FLAG:
            raise GrpcWebError(grpc.StatusCode.UNIMPLEMENTED,
                               "compressed messages are not accepted (grpc-encoding identity)")
        if len(data) - position < length:
            raise GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a message frame of {length} bytes holds {len(data) - position}")
        messages.append(data[position:position + length])
        position += length
        if len(messages) > max_messages:
            raise GrpcWebError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"more than the {max_messages} messages accepted")
    return messages


def frame(message: bytes, flag: int = 0) -> bytes:
    """One length-prefixed frame."""
    return _HEADER.pack(flag, len(message)) + message


def trailer_pairs(code: grpc.StatusCode, message: str,
                  trailers: tuple[tuple[str, Any], ...] = ()) -> list[tuple[str, str]]:
    """The trailers of a status as HTTP header pairs: ``grpc-status``, ``grpc-message``
    (percent-encoded, as gRPC over HTTP/2 has it) and the call's other trailers (``-bin``
    values base64)."""
    pairs = [("grpc-status", str(code.value[0]))]
    if message:
        pairs.append(("grpc-message", percent_encoded(message)))
    for key, value in trailers:
        if key in ("grpc-status", "grpc-message"):
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        pairs.append((key, str(value)))
    return pairs


def percent_encoded(message: str) -> str:
    """``grpc-message``'s encoding: UTF-8, the bytes outside printable ASCII and ``%`` as
    ``%XX``."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
                   for b in message.encode("utf-8"))


def trailer_frame(pairs: list[tuple[str, str]]) -> bytes:
    """The trailers' frame of an answer's body."""
    block = "".join(f"{key.lower()}:{value}\r\n" for key, value in pairs)
    return frame(block.encode("latin-1"), TRAILER_FLAG)


def encoder(text: bool) -> Any:
    """How frames go on the wire: as they are, or each base64 (padded) in the text form."""
    if text:
        return base64.b64encode
    return lambda data: data
