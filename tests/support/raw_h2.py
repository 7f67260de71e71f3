"""A raw HTTP/2 client for the hostile-client tests: frames no gRPC client would send.

gRPC clients (and h2's state machine) respect flow control, stream limits and header sizes;
an attacker does not. This client writes frames itself with ``hyperframe`` and ``hpack`` (the
frame and header codecs of the ``h2`` project) and keeps only what the tests read back: what
each stream received (headers, trailers, data, reset code), the windows the server opened, and
whether the connection was closed. It never sends a WINDOW_UPDATE unless asked, so a client
"that never reads" is the default.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME = 16384


def grpc_message(payload: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message: the compressed-flag byte, the length, the payload."""
    return bytes([flag]) + struct.pack(">I", len(payload) if length is None else length) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([value])
    out = [top]
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal_header(name: str, value: bytes | str) -> bytes:
    """One HPACK literal header field (not indexed, no Huffman coding): any size, any bytes."""
    raw_name = name.encode()
    raw_value = value.encode() if isinstance(value, str) else value
    return b"\x00" + _hpack_int(len(raw_name), 7) + raw_name + _hpack_int(len(raw_value), 7) + raw_value


@dataclass
class StreamState:
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    ended: bool = False
    #: Bytes the server allows this stream to send, as its WINDOW_UPDATEs say.
    window: int = 65535

    def status_field(self, key: str) -> str | None:
        """A field of the call's status: from the trailers, or the headers of a trailers-only answer."""
        for name, value in (*self.trailers, *self.headers):
            if name == key:
                return value
        return None

    @property
    def grpc_status(self) -> str | None:
        return self.status_field("grpc-status")

    @property
    def grpc_message(self) -> str | None:
        return self.status_field("grpc-message")

    @property
    def finished(self) -> bool:
        return self.ended or self.reset is not None


class RawH2:
    """One HTTP/2 connection on a plain socket; see the module."""

    def __init__(
        self,
        address: str,
        *,
        settings: dict[int, int] | None = None,
        preface: bool = True,
        connect_timeout: float = 5.0,
    ) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.decoder.max_allowed_table_size = 1 << 16
        self.decoder.max_header_list_size = 1 << 24
        self.streams: dict[int, StreamState] = {}
        self.next_id = 1
        self.closed = False
        self.goaway: int | None = None
        self.connection_window = 65535
        self.server_settings: dict[int, int] = {}
        self._buffer = bytearray()
        self._header_block: tuple[int, bytearray, bool] | None = None
        if preface:
            settings_frame = SettingsFrame(0)
            settings_frame.settings = dict(settings or {})
            self.send(PREFACE + settings_frame.serialize())

    # -- sending -----------------------------------------------------------------------------

    def send(self, data: bytes, timeout: float = 10.0) -> None:
        """Send ``data`` whole, waiting at most ``timeout`` seconds for the server to take it."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(previous)

    def open_stream(
        self,
        path: str = "/helloworld.Greeter/SayHello",
        *,
        extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
        raw_block: bytes = b"",
        end_stream: bool = False,
        send: bool = True,
    ) -> tuple[int, bytes]:
        """Open a gRPC stream; return its id and the frames (sent unless ``send`` is false).

        ``raw_block`` is appended to the header block as it is (for headers HPACK's encoder
        would choke on); the block is split into CONTINUATION frames as needed.
        """
        stream_id = self.next_id
        self.next_id += 2
        self.streams[stream_id] = StreamState(window=self.server_settings.get(INITIAL_WINDOW_SIZE, 65535))
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra,
        ]
        block = self.encoder.encode(headers) + raw_block
        chunks = [block[i:i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
        out = bytearray()
        for i, chunk in enumerate(chunks):
            frame: Frame = HeadersFrame(stream_id) if i == 0 else ContinuationFrame(stream_id)
            frame.data = chunk
            if i == 0 and end_stream:
                frame.flags.add("END_STREAM")
            if i == len(chunks) - 1:
                frame.flags.add("END_HEADERS")
            out += frame.serialize()
        if send:
            self.send(bytes(out))
        return stream_id, bytes(out)

    def data(self, stream_id: int, payload: bytes, *, end_stream: bool = False, send: bool = True) -> bytes:
        """DATA frames of ``payload`` on ``stream_id``: sent whatever the windows say (they are
        only counted down, for :func:`fill_window`)."""
        state = self.streams.get(stream_id)
        if state is not None:
            state.window -= len(payload)
        self.connection_window -= len(payload)
        out = bytearray()
        chunks = [payload[i:i + MAX_FRAME] for i in range(0, len(payload), MAX_FRAME)] or [b""]
        for i, chunk in enumerate(chunks):
            frame = DataFrame(stream_id)
            frame.data = chunk
            if end_stream and i == len(chunks) - 1:
                frame.flags.add("END_STREAM")
            out += frame.serialize()
        if send:
            self.send(bytes(out))
        return bytes(out)

    def window_update(self, stream_id: int, increment: int) -> None:
        frame = WindowUpdateFrame(stream_id)
        frame.window_increment = increment
        self.send(frame.serialize())

    def reset(self, stream_id: int, code: int = 8) -> None:
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        self.send(frame.serialize())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    # -- receiving ---------------------------------------------------------------------------

    def pump(self, timeout: float = 0.1) -> None:
        """Read and handle what arrives until nothing has for ``timeout`` seconds."""
        if self.closed:
            return
        self.sock.settimeout(timeout)
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except (TimeoutError, BlockingIOError):
                return
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            self._buffer += chunk
            self._parse()

    def pump_until(self, predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
        """Pump until ``predicate()`` is true or ``timeout`` seconds pass; return it."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return bool(predicate())
            self.pump(min(0.05, left))
        return True

    def _parse(self) -> None:
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self._buffer[9:9 + length]))
            del self._buffer[:9 + length]
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        stream = self.streams.get(frame.stream_id)
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                if INITIAL_WINDOW_SIZE in frame.settings:  # applies to the open streams too
                    delta = frame.settings[INITIAL_WINDOW_SIZE] - self.server_settings.get(INITIAL_WINDOW_SIZE, 65535)
                    for state in self.streams.values():
                        state.window += delta
                self.server_settings.update(frame.settings)
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.send(ack.serialize())
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags:
                pong = PingFrame(0)
                pong.flags.add("ACK")
                pong.opaque_data = frame.opaque_data
                self.send(pong.serialize())
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame.error_code
        elif isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.connection_window += frame.window_increment
            elif stream is not None:
                stream.window += frame.window_increment
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                self._header_block = (frame.stream_id, bytearray(frame.data), "END_STREAM" in frame.flags)
            elif self._header_block is not None:
                self._header_block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags and self._header_block is not None:
                stream_id, block, ended = self._header_block
                self._header_block = None
                decoded = [(str(k), str(v)) for k, v in self.decoder.decode(bytes(block), raw=False)]
                state = self.streams.setdefault(stream_id, StreamState())
                if state.headers:
                    state.trailers = decoded
                else:
                    state.headers = decoded
                state.ended = state.ended or ended
        elif isinstance(frame, DataFrame):
            if stream is not None:
                stream.data += frame.data
                stream.ended = stream.ended or "END_STREAM" in frame.flags
        elif isinstance(frame, RstStreamFrame):
            if stream is not None:
                stream.reset = frame.error_code


def fill_window(conn: RawH2, stream_id: int, total: int, sent: int = 0) -> int:
    """Send zero bytes on ``stream_id`` as far as the server's windows allow, up to ``total``
    bytes in all; return the bytes sent so far."""
    stream = conn.streams[stream_id]
    allowed = min(stream.window, conn.connection_window, total - sent)
    if allowed > 0:
        conn.data(stream_id, bytes(allowed))
        sent += allowed
    return sent


def send_messages(conn: RawH2, stream_ids: list[int], message: bytes, timeout: float = 10.0) -> None:
    """Send ``message`` (a whole gRPC message) on each stream and end it, as flow control
    allows: a well-behaved sender, so that only what a test means as an attack is one."""
    deadline = time.monotonic() + timeout
    for stream_id in stream_ids:
        state = conn.streams[stream_id]
        while min(state.window, conn.connection_window) < len(message):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server opened no window for stream {stream_id}")
            conn.pump(0.01)
        conn.data(stream_id, message, end_stream=True)
