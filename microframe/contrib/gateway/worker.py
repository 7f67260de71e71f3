"""``GatewayWorker``: a gunicorn worker class that hostile HTTP clients cannot block.

gunicorn's own workers give a connection a thread (``gthread``) or the whole process
(``sync``) before its request has arrived: one idle connection blocks a ``sync`` worker, a few
slow ones (headers sent a byte at a time, a body that never ends, an NDJSON stream the client
does not read) hold every ``gthread`` thread. This worker reads requests on an event loop, with
time limits, and gives a thread only to the application:

- a connection costs a few kilobytes until its request's head and body have arrived in full,
  within ``GATEWAY["HEADER_TIMEOUT"]`` and ``GATEWAY["BODY_TIMEOUT"]`` (and no larger than
  ``MAX_HEADER_BYTES`` and ``MAX_BODY_BYTES``), or it is answered 408/431/413 and closed;
- the WSGI application runs in a pool of ``threads`` threads, one step of its response at a
  time: a reply is written and drained on the loop, and a client that does not read it within
  ``GATEWAY["SEND_TIMEOUT"]`` loses its connection (the application's iterator is closed, so
  the gRPC call behind an NDJSON stream ends too); it never holds a thread while it stalls;
- ``worker_connections`` bounds the connections a worker keeps open; past it new ones are
  closed at once, and idle kept-alive connections are closed after ``keepalive`` seconds.

It is written on ``h11`` (the HTTP/1.1 state machine of the python-hyper project) and
gunicorn's base worker (signals, heartbeat, access log, ``max_requests``), because no gunicorn
worker class both keeps WSGI and reads requests before giving them a thread. Use it with
``gunicorn -k microframe.contrib.gateway.worker.GatewayWorker`` (the template's
``gunicorn.conf.py`` sets it).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import grpc
import h11
from gunicorn.workers.base import Worker

from microframe.conf import global_settings
from microframe.contrib.gateway import grpcweb
from microframe.contrib.gateway.errors import error_json
from microframe.utils.resources import raise_open_files_limit
from microframe.utils.timeouts import with_timeout

#: Defaults when the gateway's settings cannot be read (a WSGI application of another kind):
#: those of ``global_settings.GATEWAY``.
DEFAULTS = {
    key: global_settings.GATEWAY[key]
    for key in (
        "HEADER_TIMEOUT", "BODY_TIMEOUT", "SEND_TIMEOUT", "MAX_HEADER_BYTES", "MAX_BODY_BYTES",
    )
}
_END = object()
#: The gRPC code of the JSON error body of each answer the worker gives by itself.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class _ClientGone(Exception):
    """The client went away, or read nothing within SEND_TIMEOUT."""


class _Response:
    """What gunicorn's access log reads of a response."""

    def __init__(self) -> None:
        self.status = "500 Internal Server Error"
        self.headers: list[tuple[str, str]] = []
        self.sent = 0


class _Request:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


def _limits() -> dict[str, Any]:
    limits = dict(DEFAULTS)
    try:
        from microframe.conf import settings

        gateway = settings.GATEWAY
        limits.update({k: gateway[k] for k in DEFAULTS if k in gateway})
    except Exception:  # no microframe settings: a plain WSGI application
        pass
    return limits


class GatewayWorker(Worker):
    """See the module."""

    def init_process(self) -> None:
        raise_open_files_limit()
        super().init_process()

    def run(self) -> None:
        limits = _limits()
        self.header_timeout = float(limits["HEADER_TIMEOUT"])
        self.body_timeout = float(limits["BODY_TIMEOUT"])
        self.send_timeout = float(limits["SEND_TIMEOUT"])
        self.max_header = int(limits["MAX_HEADER_BYTES"])
        self.max_body = int(limits["MAX_BODY_BYTES"])
        self.connections = 0
        self.requests = 0
        self.in_flight = 0
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, self.cfg.threads), thread_name_prefix="gateway"
        )
        try:
            asyncio.run(self._serve())
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        ssl_context = None
        if self.cfg.is_ssl:
            from gunicorn import sock as gsock

            ssl_context = gsock.ssl_context(self.cfg)
        # A TLS handshake is part of the time a connection has to send its request.
        handshake: dict[str, Any] = (
            {"ssl_handshake_timeout": self.header_timeout} if ssl_context is not None else {}
        )
        servers = [
            await asyncio.start_server(
                self._connection, sock=listener.sock, ssl=ssl_context, limit=self.max_header,
                backlog=self.cfg.backlog, **handshake,
            )
            for listener in self.sockets
        ]
        interval = max(0.2, min(1.0, self.timeout / 4)) if self.timeout else 1.0
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                await asyncio.sleep(interval)
        finally:
            for server in servers:
                server.close()
            # Let the requests being served finish, for the graceful timeout at most.
            until = time.monotonic() + self.cfg.graceful_timeout
            while self.in_flight and time.monotonic() < until:
                self.notify()
                await asyncio.sleep(0.1)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.cfg.worker_connections:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            await self._serve_connection(reader, writer)
        except (_ClientGone, ConnectionError, TimeoutError, h11.ProtocolError):
            pass
        except Exception:
            self.log.exception("gateway worker: a connection failed")
        finally:
            self.connections -= 1
            transport = writer.transport
            if transport.get_write_buffer_size():
                transport.abort()  # a client that does not read: nothing more will reach it
            elif not transport.is_closing():
                transport.close()

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, until: float
    ) -> Any:
        """The next h11 event, reading from ``reader`` until loop time ``until``."""
        loop = asyncio.get_running_loop()
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = until - loop.time()
            if left <= 0:
                raise TimeoutError
            data = await with_timeout(reader.read(65536), left)
            conn.receive_data(data)
            if not data and conn.their_state is not h11.DONE:
                raise _ClientGone

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header)
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("", 0)
        first = True
        while self.alive:
            # A new connection has HEADER_TIMEOUT to send its request's head; a kept-alive one
            # has `keepalive` seconds to start its next one.
            if not first and not self.cfg.keepalive:
                return
            wait = self.header_timeout if first else float(self.cfg.keepalive)
            try:
                event = await self._next_event(conn, reader, loop.time() + wait)
            except TimeoutError:
                if first:
                    await self._refuse(
                        conn, reader, writer, 408, "the request did not arrive in time"
                    )
                return
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint if err.error_status_hint >= 400 else 400
                if "too long" in str(err) or "exceed" in str(err).lower():
                    status = 431
                await self._refuse(conn, reader, writer, status, "malformed request")
                return
            if not isinstance(event, h11.Request):  # the connection closed, or paused
                return
            # h11 bounds a head only while it is incomplete, and a read may bring a whole one
            # past the limit at once: its size is checked again, complete.
            head = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head > self.max_header:
                await self._refuse(conn, reader, writer, 431,
                                   f"the request head is more than the {self.max_header} bytes "
                                   "accepted", event)
                return
            # Both framings at once is how requests are smuggled past a proxy (RFC 9112 6.3).
            names = {k for k, _ in event.headers}
            if b"transfer-encoding" in names and b"content-length" in names:
                await self._refuse(conn, reader, writer, 400,
                                   "Content-Length and Transfer-Encoding together", event)
                return
            first = False
            started = datetime.datetime.now()
            body = await self._body(conn, reader, writer, event)
            if body is None:
                return
            self.requests += 1
            self.in_flight += 1
            try:
                keep = await self._respond(conn, reader, writer, event, body, peer, local, started)
            finally:
                self.in_flight -= 1
            if self.requests >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _body(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> bytes | None:
        """The request's body, whole, within BODY_TIMEOUT and MAX_BODY_BYTES (None: refused)."""
        too_large = f"the body is more than the {self.max_body} bytes accepted"
        for name, value in request.headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._refuse(conn, reader, writer, 413, too_large, request)
                return None
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        until = asyncio.get_running_loop().time() + self.body_timeout
        while True:
            try:
                event = await self._next_event(conn, reader, until)
            except TimeoutError:
                await self._refuse(
                    conn, reader, writer, 408, "the request body did not arrive in time", request
                )
                return None
            except h11.RemoteProtocolError:
                await self._refuse(conn, reader, writer, 400, "malformed request body", request)
                return None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    await self._refuse(conn, reader, writer, 413, too_large, request)
                    return None
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                return None

    async def _refuse(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        message: str,
        request: h11.Request | None = None,
    ) -> None:
        """Answer ``status`` with a JSON error and close (when a response may still be sent); a
        gRPC-Web ``request`` is answered as gRPC-Web (200, the status in its trailers), with the
        CORS headers the application gives its origin."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        code = _CODES.get(status, grpc.StatusCode.INTERNAL)
        headers: list[tuple[str, str]] = []
        kind = None
        if request is not None:
            environ = _header_environ(request.headers)
            kind = grpcweb.content_type(environ)
            cors = getattr(self.wsgi, "cors", None)
            if cors is not None:
                headers += cors.answer_headers(environ)
        if kind is not None:
            text, codec = grpcweb.CONTENT_TYPES[kind]
            pairs = grpcweb.trailer_pairs(code, message)
            body = grpcweb.encoder(text)(grpcweb.trailer_frame(pairs))
            status = 200
            headers += [("content-type", f"application/grpc-web{'-text' if text else ''}+{codec}"),
                        *pairs]
        else:
            body = error_json(code, message)
            headers.append(("content-type", "application/json"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=[
                *headers,
                ("content-length", str(len(body))),
                ("connection", "close"),
            ])) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        writer.write(data)
        try:
            await with_timeout(writer.drain(), 1.0)
            # Close our side and let the client's unread request go by for a moment: closing
            # with unread input makes the kernel reset the connection, and the answer is lost.
            if writer.can_write_eof():
                writer.write_eof()
            loop = asyncio.get_running_loop()
            until = loop.time() + 1.0
            while await with_timeout(reader.read(65536), max(0.01, until - loop.time())):
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass

    # -- the application -----------------------------------------------------------------------

    def _environ(self, request: h11.Request, body: bytes, peer: Any, local: Any) -> dict[str, Any]:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        if not path.startswith("/") and "://" in path:  # an absolute-form target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "REQUEST_URI": target,
            "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}",
            "SERVER_NAME": str(local[0]),
            "SERVER_PORT": str(local[1]),
            "REMOTE_ADDR": str(peer[0]),
            "REMOTE_PORT": str(peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.cfg.is_ssl else "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        environ.update(_header_environ(request.headers))
        return environ

    def _start(
        self, environ: dict[str, Any], response: _Response
    ) -> tuple[Iterable[bytes], Iterator[bytes], Any]:
        """Run the application up to its first non-empty chunk (in a thread)."""

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and response.sent:
                raise exc_info[1].with_traceback(exc_info[2])
            response.status = status
            response.headers = list(headers)
            return lambda data: None  # the legacy write(): unused by the gateway

        result = self.wsgi(environ, start_response)
        iterator = iter(result)
        return result, iterator, self._step(iterator)

    @staticmethod
    def _step(iterator: Iterator[bytes]) -> Any:
        for chunk in iterator:
            if chunk:
                return chunk
        return _END

    async def _respond(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
        peer: Any,
        local: Any,
        started: datetime.datetime,
    ) -> bool:
        loop = asyncio.get_running_loop()
        environ = self._environ(request, body, peer, local)
        response = _Response()
        result: Any = None
        try:
            result, iterator, chunk = await loop.run_in_executor(
                self.pool, self._start, environ, response
            )
            code_text, _, reason = response.status.partition(" ")
            headers = [(k, v) for k, v in response.headers]
            if not self.alive or self.requests >= self.max_requests:  # no next request on it
                headers.append(("Connection", "close"))
            head = conn.send(h11.Response(
                status_code=int(code_text), reason=reason.encode("latin-1"), headers=headers
            ))
            await self._write(writer, head)
            head_only = request.method == b"HEAD"
            while chunk is not _END:
                if not head_only:
                    await self._write(writer, conn.send(h11.Data(data=chunk)))
                    response.sent += len(chunk)
                chunk = await loop.run_in_executor(self.pool, self._step, iterator)
            await self._write(writer, conn.send(h11.EndOfMessage()))
            return True
        except (_ClientGone, ConnectionError, TimeoutError):
            return False
        except Exception:
            self.log.exception("Error handling request %s", request.target.decode("latin-1"))
            await self._refuse(conn, reader, writer, 500, "internal error")
            return False
        finally:
            if result is not None and hasattr(result, "close"):
                await loop.run_in_executor(self.pool, result.close)
            try:
                received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
                self.log.access(response, _Request(received), environ,
                                datetime.datetime.now() - started)
            except Exception:
                self.log.exception("Failed to log the request")

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write ``data``; raise _ClientGone when the client does not read it within
        SEND_TIMEOUT."""
        if writer.is_closing():
            raise _ClientGone
        writer.write(data)
        try:
            await with_timeout(writer.drain(), self.send_timeout)
        except TimeoutError:
            raise _ClientGone from None


def _header_environ(headers: Any) -> dict[str, str]:
    """The WSGI environ keys of request ``headers`` (h11's pairs): ``CONTENT_TYPE``,
    ``HTTP_<NAME>`` (repeated headers joined with commas); ``Content-Length`` is the body's."""
    environ: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        # As gunicorn and nginx do: X_Forwarded_For must not pass for X-Forwarded-For.
        if "_" in name:
            continue
        value = raw_value.decode("latin-1")
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
