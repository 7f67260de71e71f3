"""``GatewayApplication``: the WSGI application serving a service's RPCs as HTTP/JSON.

Every request is matched against the routes built at start-up (:mod:`.rules`), decoded from
JSON into the request message, and sent through the client library (discovery, balancing,
breaker, retries) to the gRPC service; the reply is encoded back to JSON. A server stream is
answered as newline-delimited JSON (``application/x-ndjson``), one reply per line, sent as the
replies arrive. Errors are answered with the HTTP status of their gRPC code and a JSON body
(:mod:`.errors`): the error's ``google.rpc.Status`` in the JSON mapping, its details included,
and a ``Retry-After`` header when it says when to try again.

The calls run on the one background event loop of :mod:`microframe.client.blocking`, shared by
the threads of the worker: any gunicorn worker class that runs WSGI applications in threads
(``sync``, ``gthread``) serves it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import grpc
from google.rpc.error_details_pb2 import RetryInfo

from microframe.client.blocking import background_loop, iterate
from microframe.contrib.gateway import grpcweb
from microframe.contrib.gateway.cors import Cors, is_preflight
from microframe.contrib.gateway.errors import (
    HTTP_STATUS,
    error_body,
    error_json,
    retry_after_header,
    status_line,
)
from microframe.contrib.gateway.rules import (
    Binding,
    field_of,
    routed_bindings,
    set_path,
    text_value,
)
from microframe.core.error_details import retry_delay
from microframe.core.exceptions import RpcError
from microframe.utils.protojson import message_class, parse_requests, to_json, within_depth

logger = logging.getLogger("microframe.gateway")

StartResponse = Callable[..., Any]
JSON = "application/json"
NDJSON = "application/x-ndjson"


#: Metadata that carries credentials: passed by the gateway only under its own header, and only
#: when FORWARD_HEADERS names it, never as Grpc-Metadata-*.
SENSITIVE = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-api-key", "x-auth-token"}
)
#: Metadata keys gRPC reserves for itself (HTTP/2 pseudo-headers start with ":", grpc-* too).
RESERVED = frozenset({"te", "content-type", "user-agent", "host", "connection", "upgrade",
                      "transfer-encoding", "keep-alive", "proxy-connection"})
#: gRPC metadata key grammar (lower case ASCII letters, digits, "-", "_", ".").
METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
#: Codes whose messages may name internal services, hosts and addresses: HTTP callers get a
#: generic message instead, unless GATEWAY["EXPOSE_ERRORS"] (or DEBUG).
OPAQUE_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; try again later",
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.UNKNOWN: "unknown error",
    grpc.StatusCode.DATA_LOSS: "data loss",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call did not complete in time",
}


def request_path(environ: dict[str, Any]) -> str:
    """The request's path, percent-decoded as UTF-8.

    WSGI's ``PATH_INFO`` is already decoded, as latin-1, and has lost the difference between
    ``/`` and ``%2F``; the raw path the server received (gunicorn's ``RAW_URI``,
    ``REQUEST_URI`` elsewhere) keeps both, so it is matched instead, ``%2F`` inside a segment
    decoded only once the segment is bound to a field.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = urlsplit(raw).path if "://" in raw else raw.split("?", 1)[0]
        if path.startswith("/"):
            return path
    try:
        return str(environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, "the path is not UTF-8") from None


def metadata_pair(name: str, value: str) -> tuple[str, Any]:
    """A header as gRPC metadata: a ``-bin`` value base64-decoded, any other printable ASCII;
    HttpError (400) for what gRPC metadata cannot carry."""
    if name.endswith("-bin"):
        try:  # padded or not, as gRPC's HTTP/2 protocol lets senders choose
            return name, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except ValueError:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"header {name}: a -bin value must be base64") from None
    if not all(" " <= c <= "~" for c in value):
        raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                        f"header {name}: only printable ASCII can be passed on")
    return name, value


def retry_after(err: RpcError, details: Sequence[Any]) -> str | None:
    """Return the ``Retry-After`` header of ``err``, or None.

    The delay of a ``google.rpc.RetryInfo`` among ``details``, else its ``retry-after`` trailer
    (seconds, maybe fractional), in whole seconds, rounded up, at least 1.
    """
    delay = retry_delay(details)
    if delay is not None:
        return retry_after_header(delay)
    for key, value in err.trailers:
        if key == "retry-after":
            try:
                return retry_after_header(float(value))
            except (TypeError, ValueError):
                return "1"
    return None


class HttpError(Exception):
    """An answer without a call: a bad request, a route that does not exist..."""

    def __init__(
        self,
        http_status: int,
        code: grpc.StatusCode,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status, self.code, self.message = http_status, code, message
        self.headers = headers or []


class GatewayApplication:
    """Serve ``routes`` (the service's router, by default) as HTTP/JSON; see the module."""

    def __init__(
        self, routes: list[Any] | None = None, *, options: dict[str, Any] | None = None
    ) -> None:
        from microframe.client import Client
        from microframe.conf import dict_setting, settings
        from microframe.core.descriptors import LocalService

        config = dict(dict_setting("GATEWAY"))
        config.update(options or {})
        local = LocalService(load_router=routes is None)
        routes = local.routes if routes is None else routes
        self.timeout = float(config["TIMEOUT"])
        self.max_body = int(config["MAX_BODY_BYTES"])
        self.max_messages = int(config["MAX_STREAM_MESSAGES"])
        self.max_depth = int(config["MAX_JSON_DEPTH"])
        self.max_metadata = int(config["MAX_METADATA_BYTES"])
        expose = config.get("EXPOSE_ERRORS")
        self.expose_errors = bool(settings.DEBUG) if expose is None else bool(expose)
        self.emit_defaults = bool(config["EMIT_DEFAULTS"])
        self.cors = Cors(config.get("CORS"))
        self.grpc_web = bool(config.get("GRPC_WEB", True))
        # WSGI key of each forwarded header -> its metadata name.
        self.forward = {
            f"HTTP_{h.upper().replace('-', '_')}": h.lower() for h in config["FORWARD_HEADERS"]
        }
        self.forwarded = frozenset(self.forward.values())
        service = config["SERVICE"] or settings.SERVICE_NAME
        if config["ADDRESS"]:
            self.client = Client(service, address=config["ADDRESS"])
        else:
            self.client = Client(service)
        self.exact: dict[tuple[str, str], Binding] = {}
        self.templates: list[Binding] = []
        pool = local.pool
        self.bindings = routed_bindings(routes, pool)
        for binding in self.bindings:
            if binding.variables or "*" in binding.template:
                self.templates.append(binding)
            else:
                self.exact.setdefault((binding.verb, binding.template), binding)
        self._health = message_class(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
        )
        self._health_reply = message_class(
            pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
        )
        # The request and reply classes of every method, by path.
        self.classes = {
            b.path: (message_class(b.method.input_type), message_class(b.method.output_type))
            for b in [*self.exact.values(), *self.templates]
        }
        # The default route of every method, by path: what gRPC-Web calls.
        self.methods = {b.path: b for b in self.exact.values() if b.template == b.path}
        self.openapi: bytes | None = None
        if config.get("OPENAPI", True):
            from microframe.contrib.gateway.openapi import service_openapi

            document = service_openapi(self.bindings)
            self.openapi = json.dumps(document, indent=1).encode()
        self.docs: Any = None
        if self.openapi is not None and config.get("DOCS", True):
            try:
                from microframe.contrib.gateway.docs_page import DocsPage

                self.docs = DocsPage(str(settings.SERVICE_NAME))
            except ModuleNotFoundError as err:  # swagger-ui-py: the gateway extra
                logger.warning("gateway: no /docs page: %s (pip install "
                               "'microframe-grpc[gateway]')", err)

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.cors.enabled:
            if is_preflight(environ):
                status, headers, refused = self.cors.preflight(environ)
                if refused:
                    return _error(start_response, status, grpc.StatusCode.PERMISSION_DENIED,
                                  refused, headers)
                start_response(status_line(status), [*headers, ("Content-Length", "0")])
                return []
            extra = self.cors.answer_headers(environ)
            if extra:
                start_response = _with_headers(start_response, extra)
        if self.grpc_web and environ.get("REQUEST_METHOD") == "POST":
            kind = grpcweb.content_type(environ)
            if kind is not None:
                return self._grpc_web(environ, kind, start_response)
        try:
            path = request_path(environ)
            verb = environ.get("REQUEST_METHOD", "GET").upper()
            if self.docs is not None and path.startswith("/docs") and verb in ("GET", "HEAD"):
                if path == "/docs/":  # the page's paths are relative to /docs
                    start_response("301 Moved Permanently",
                                   [("Location", "../docs"), ("Content-Length", "0")])
                    return []
                found = self.docs.get(path)
                if found is not None:
                    kind, body = found
                    start_response(status_line(200),
                                   self.docs.headers(kind, body, page=path == "/docs"))
                    return [body] if verb == "GET" else []
            if path in ("/healthz", "/openapi.json"):
                if verb not in ("GET", "HEAD"):
                    raise HttpError(405, grpc.StatusCode.UNIMPLEMENTED,
                                    f"{verb} is not allowed on {path}", [("Allow", "GET, HEAD")])
                if path == "/healthz":
                    return self._healthz(start_response)
                if self.openapi is not None:
                    return _answer(start_response, 200, self.openapi)
            binding, variables = self._route(verb, path)
            requests = self._requests(binding, variables, environ)
            metadata = self._metadata(environ)
            return self._call(binding, requests, metadata, start_response)
        except HttpError as err:
            return _error(start_response, err.http_status, err.code, err.message, err.headers)
        except RpcError as err:
            return self._rpc_error(start_response, err)
        except RecursionError:  # a structure nested past what protobuf's converter follows
            return _error(start_response, 400, grpc.StatusCode.INVALID_ARGUMENT,
                          "the body is nested too deeply")
        except Exception:
            logger.exception("gateway: %s %s failed",
                             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return _error(start_response, 500, grpc.StatusCode.INTERNAL, "internal error")

    # -- routing and decoding ------------------------------------------------------------------

    def _route(self, verb: str, path: str) -> tuple[Binding, dict[str, str]]:
        binding = self.exact.get((verb, path))
        if binding is not None:
            return binding, {}
        allowed = {v for v, p in self.exact if p == path}
        for candidate in self.templates:
            try:
                variables = candidate.match(path)
            except ValueError as err:
                raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
            if variables is None:
                continue
            if candidate.verb == verb:
                return candidate, variables
            allowed.add(candidate.verb)
        if allowed:
            raise HttpError(405, grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not allowed on {path}",
                            [("Allow", ", ".join(sorted(allowed)))])
        raise HttpError(404, grpc.StatusCode.NOT_FOUND, f"no RPC is served at {path}")

    def _raw_body(self, environ: dict[str, Any]) -> bytes:
        length_text = environ.get("CONTENT_LENGTH") or ""
        try:
            length = int(length_text) if length_text else None
        except ValueError:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, "bad Content-Length") from None
        if length is not None and length > self.max_body:
            raise HttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the body is {length} bytes, more than the {self.max_body} accepted")
        stream = environ["wsgi.input"]
        data = stream.read(length) if length is not None else stream.read(self.max_body + 1)
        if len(data) > self.max_body:
            raise HttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the body is more than the {self.max_body} bytes accepted")
        return bytes(data)

    def _body(self, environ: dict[str, Any]) -> Any:
        data = self._raw_body(environ)
        if not data.strip():
            return None
        # The body is JSON whatever Content-Type says (as grpc-gateway's default marshaler reads
        # it): `curl -d '{...}'` sends application/x-www-form-urlencoded.
        try:
            value = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"the body is not JSON: {err}") from None
        except RecursionError:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            "the body is nested too deeply") from None
        if not within_depth(value, self.max_depth):
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"the body is nested more than {self.max_depth} levels deep")
        return value

    def _requests(
        self, binding: Binding, variables: dict[str, str], environ: dict[str, Any]
    ) -> list[Any]:
        request_class, _ = self.classes[binding.path]
        descriptor = binding.method.input_type
        body = self._body(environ) if binding.body else None
        streaming = binding.method.client_streaming
        try:
            if streaming:
                if isinstance(body, list) and len(body) > self.max_messages:
                    raise HttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"the body holds {len(body)} messages, more than the "
                                    f"{self.max_messages} accepted")
                return parse_requests(body if body is not None else [], request_class, True)
            if binding.body == "*":
                value: dict[str, Any] = body if body is not None else {}
                if not isinstance(value, dict):
                    raise ValueError("the body must be a JSON object")
            else:
                value = {}
                if binding.body and body is not None:
                    set_path(value, binding.body, body)
                try:
                    query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True,
                                      errors="strict")
                except UnicodeDecodeError:
                    raise ValueError("the query string is not UTF-8 once decoded") from None
                for key, text in query:
                    field = field_of(descriptor, key)
                    converted = text_value(field, text)
                    if field.is_repeated:
                        current = _get_path(value, key)
                        set_path(value, key, [*(current or []), converted])
                    else:
                        set_path(value, key, converted)
            for path, text in variables.items():
                set_path(value, path, text_value(field_of(descriptor, path), text))
            return parse_requests(value, request_class, False)
        except KeyError as err:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"{descriptor.full_name} has no field {err.args[0]!r}") from None
        except ValueError as err:
            raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None

    def _metadata(self, environ: dict[str, Any]) -> list[tuple[str, Any]]:
        pairs = [(name, environ[key]) for key, name in self.forward.items() if key in environ]
        for key, value in environ.items():
            if key.startswith(("HTTP_X_MD_GLOBAL_", "HTTP_X_MD_LOCAL_")):
                # Metadata that travels (microframe.core.propagation): its own headers pass.
                name = key[5:].lower().replace("_", "-")
                if METADATA_KEY.match(name):
                    pairs.append((name, value))
                continue
            if key.startswith("HTTP_GRPC_METADATA_"):
                name = key[19:].lower().replace("_", "-")
                # Credentials, and whatever FORWARD_HEADERS passes, come only from their own
                # header: Grpc-Metadata-Authorization must neither get round FORWARD_HEADERS
                # nor win over the real Authorization.
                if name in SENSITIVE or name in self.forwarded:
                    continue
                if not METADATA_KEY.match(name) or name.startswith("grpc-") or name in RESERVED:
                    raise HttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"header Grpc-Metadata-{name}: {name!r} cannot be passed "
                                    "as gRPC metadata")
                pairs.append((name, value))
        return _with_peer(pairs, environ, self.max_metadata)

    def _web_metadata(self, environ: dict[str, Any]) -> list[tuple[str, Any]]:
        """The metadata of a gRPC-Web call: its headers, but those of HTTP and the browser
        (:data:`grpcweb.NOT_METADATA`, ``sec-*``), those gRPC reserves, and credentials not in
        FORWARD_HEADERS."""
        pairs = []
        for key, value in environ.items():
            if not key.startswith("HTTP_"):
                continue
            name = key[5:].lower().replace("_", "-")
            if name in grpcweb.NOT_METADATA or name in RESERVED \
                    or name.startswith(("sec-", "grpc-")):
                continue
            if name in SENSITIVE and name not in self.forwarded:
                continue
            if METADATA_KEY.match(name):
                pairs.append((name, value))
        return _with_peer(pairs, environ, self.max_metadata)

    def _message(self, err: RpcError) -> str:
        """The message an HTTP caller is given for ``err`` (see OPAQUE_MESSAGES)."""
        if self.expose_errors or err.code not in OPAQUE_MESSAGES:
            return err.message
        logger.warning("gateway: %s: %s (answered without the message)", err.code.name, err.message)
        return OPAQUE_MESSAGES[err.code]

    def _details(self, err: RpcError) -> tuple[Any, ...]:
        """Return the details an HTTP caller is given for ``err``.

        All of them, but for the codes whose message it is not given (OPAQUE_MESSAGES): their
        other details may name internals too, so only a ``RetryInfo`` passes.
        """
        if self.expose_errors or err.code not in OPAQUE_MESSAGES:
            return err.details
        return tuple(detail for detail in err.details if isinstance(detail, RetryInfo))

    def _rpc_error(self, start_response: StartResponse, err: RpcError) -> list[bytes]:
        details = self._details(err)
        after = retry_after(err, details)
        headers = [("Retry-After", after)] if after is not None else []
        http_status = HTTP_STATUS.get(err.code, 500)
        return _error(start_response, http_status, err.code, self._message(err), headers, details)

    # -- calling -------------------------------------------------------------------------------

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, background_loop()).result()

    def _call(self, binding: Binding, requests: list[Any], metadata: list[tuple[str, str]],
              start_response: StartResponse) -> Iterable[bytes]:
        options: dict[str, Any] = {"timeout": self.timeout, "metadata": metadata}
        if not binding.method.server_streaming:
            reply = self._reply(binding, requests, options)
            body = self._encode(reply, binding.response_body).encode()
            start_response(
                status_line(200), [("Content-Type", JSON), ("Content-Length", str(len(body)))]
            )
            return [body]
        # An error before the first reply is answered with its status.
        first, replies, stream = self._open_stream(binding, requests, options)
        start_response(status_line(200), [("Content-Type", NDJSON)])
        return self._lines(first, replies, stream, binding.response_body)

    def _reply(self, binding: Binding, requests: list[Any], options: dict[str, Any]) -> Any:
        """The reply of a call with one reply (unary or client-streaming)."""
        _, reply_class = self.classes[binding.path]
        if binding.method.client_streaming:
            call = self.client.stream_unary(binding.path, requests, reply_class, **options)
        else:
            call = self.client.unary(binding.path, requests[0], reply_class, **options)
        return self._run(call)

    def _open_stream(self, binding: Binding, requests: list[Any],
                     options: dict[str, Any]) -> tuple[Any, Iterator[Any], Any]:
        """Start a server-streaming call: its first reply (None: none), the rest, and the stream
        (to close when the HTTP client goes away). An error before the first reply is raised."""
        _, reply_class = self.classes[binding.path]
        if binding.method.client_streaming:
            stream = self.client.stream_stream(binding.path, requests, reply_class, **options)
        else:
            stream = self.client.unary_stream(binding.path, requests[0], reply_class, **options)
        replies = iterate(stream, background_loop())
        try:
            first = next(replies, None)
        except BaseException:
            self._close(stream)
            raise
        return first, replies, stream

    def _close(self, stream: Any) -> None:
        """End the call of ``stream`` (the HTTP client went away): the server stops sending."""
        asyncio.run_coroutine_threadsafe(stream.aclose(), background_loop())

    def _lines(self, first: Any, rest: Iterator[Any], stream: Any, field: str) -> Iterator[bytes]:
        finished = False
        try:
            if first is not None:
                yield (self._encode(first, field) + "\n").encode()
                for reply in rest:
                    yield (self._encode(reply, field) + "\n").encode()
            finished = True
        except RpcError as err:  # after the status line: the error is the stream's last line
            finished = True
            body = error_body(err.code, self._message(err), self._details(err))
            yield json.dumps({"error": body}).encode() + b"\n"
        finally:
            if not finished:  # closed by the server (gunicorn) before the end: a client disconnect
                self._close(stream)

    def _encode(self, reply: Any, field: str) -> str:
        if not field:
            return to_json(reply, emit_defaults=self.emit_defaults)
        descriptor = reply.DESCRIPTOR.fields_by_name[field]
        if descriptor.message_type is not None and not descriptor.is_repeated:
            return to_json(getattr(reply, field), emit_defaults=self.emit_defaults)
        # A scalar, repeated or map field: its JSON value, as the whole reply's JSON has it
        # (the messages in it with or without their defaults, as a whole reply would be);
        # the field itself is answered even when it holds its default ([], {}, 0, "").
        from google.protobuf import json_format

        whole = json_format.MessageToDict(
            reply, always_print_fields_with_no_presence=self.emit_defaults
        )
        if descriptor.json_name not in whole:
            whole = json_format.MessageToDict(
                type(reply)(), always_print_fields_with_no_presence=True
            )
        return json.dumps(whole.get(descriptor.json_name))

    # -- gRPC-Web ------------------------------------------------------------------------------

    def _grpc_web(self, environ: dict[str, Any], kind: str,
                  start_response: StartResponse) -> Iterable[bytes]:
        text, codec = grpcweb.CONTENT_TYPES[kind]
        answer_type = f"application/grpc-web{'-text' if text else ''}+{codec}"
        headers = [("Content-Type", answer_type)]
        encode = grpcweb.encoder(text)
        try:
            path = request_path(environ)
            binding = self.methods.get(path)
            if binding is None:
                raise grpcweb.GrpcWebError(grpc.StatusCode.UNIMPLEMENTED, f"no RPC {path}")
            request_class, _ = self.classes[path]
            data = self._raw_body(environ)
            messages = grpcweb.frames(grpcweb.decode_text(data) if text else data,
                                      self.max_messages)
            method = binding.method
            if not method.client_streaming and len(messages) != 1:
                raise grpcweb.GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"a call of {path} takes one message, not "
                                           f"{len(messages)}")
            requests = [_decode(m, request_class, codec, self.max_depth) for m in messages]
            metadata = self._web_metadata(environ)
            asked = grpcweb.timeout_of(environ.get("HTTP_GRPC_TIMEOUT"))
            options: dict[str, Any] = {
                "timeout": min(asked, self.timeout) if asked is not None else self.timeout,
                "metadata": metadata,
            }
            if method.server_streaming:
                return self._web_stream(binding, requests, options, headers, encode, codec,
                                        start_response)
            reply = self._reply(binding, requests, options)
        except grpcweb.GrpcWebError as err:
            return self._web_error(start_response, headers, encode, err.code, err.message)
        except HttpError as err:
            return self._web_error(start_response, headers, encode, err.code, err.message)
        except RpcError as err:
            return self._web_error(start_response, headers, encode, err.code,
                                   self._message(err), self._web_trailers(err))
        except Exception:
            logger.exception("gateway: gRPC-Web %s failed", environ.get("PATH_INFO"))
            return self._web_error(start_response, headers, encode, grpc.StatusCode.INTERNAL,
                                   "internal error")
        body = encode(grpcweb.frame(_encode_message(reply, codec))) + encode(
            grpcweb.trailer_frame(grpcweb.trailer_pairs(grpc.StatusCode.OK, "")))
        start_response(status_line(200), [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _web_stream(self, binding: Binding, requests: list[Any], options: dict[str, Any],
                    headers: list[tuple[str, str]], encode: Any, codec: str,
                    start_response: StartResponse) -> Iterable[bytes]:
        # An error before the first reply is raised: a trailers-only answer.
        first, replies, stream = self._open_stream(binding, requests, options)
        start_response(status_line(200), headers)
        return self._web_frames(first, replies, stream, encode, codec)

    def _web_frames(self, first: Any, rest: Iterator[Any], stream: Any, encode: Any,
                    codec: str) -> Iterator[bytes]:
        finished = False
        try:
            if first is not None:
                yield encode(grpcweb.frame(_encode_message(first, codec)))
                for reply in rest:
                    yield encode(grpcweb.frame(_encode_message(reply, codec)))
            finished = True
            pairs = grpcweb.trailer_pairs(grpc.StatusCode.OK, "")
        except RpcError as err:
            finished = True
            pairs = grpcweb.trailer_pairs(err.code, self._message(err), self._web_trailers(err))
        finally:
            if not finished:  # the HTTP client went away: the call ends
                self._close(stream)
        yield encode(grpcweb.trailer_frame(pairs))

    def _web_trailers(self, err: RpcError) -> tuple[tuple[str, Any], ...]:
        """The trailers of ``err`` a gRPC-Web caller gets: its rich status with only the
        details an HTTP caller is given (:meth:`_details`); no other trailer of the service."""
        from microframe.core.error_details import status_trailer

        details = self._details(err)
        kept = tuple((k, v) for k, v in err.trailers if k == "retry-after")
        if not details:
            return kept
        return (*kept, status_trailer(err.code, self._message(err), details))

    def _web_error(self, start_response: StartResponse, headers: list[tuple[str, str]],
                   encode: Any, code: grpc.StatusCode, message: str,
                   trailers: tuple[tuple[str, Any], ...] = ()) -> list[bytes]:
        """A trailers-only answer: the status as headers, and as the body's trailers frame for
        the clients that read only the body."""
        pairs = grpcweb.trailer_pairs(code, message, trailers)
        body = encode(grpcweb.trailer_frame(pairs))
        start_response(status_line(200),
                       [*headers, *pairs, ("Content-Length", str(len(body)))])
        return [body]

    def _healthz(self, start_response: StartResponse) -> Iterable[bytes]:
        path = "/grpc.health.v1.Health/Check"
        try:
            reply = self._run(self.client.unary(
                path, self._health(), self._health_reply, timeout=min(self.timeout, 5.0)
            ))
        except RpcError as err:
            return _error(start_response, 503, err.code, self._message(err))
        serving = reply.status == reply.SERVING
        body = json.dumps({"status": reply.ServingStatus.Name(reply.status)}).encode()
        start_response(
            status_line(200 if serving else 503),
            [("Content-Type", JSON), ("Content-Length", str(len(body)))],
        )
        return [body]


def _with_peer(pairs: list[tuple[str, str]], environ: dict[str, Any],
               limit: int) -> list[tuple[str, Any]]:
    """``pairs`` with the caller's address added to ``x-forwarded-for``, as gRPC metadata of at
    most ``limit`` bytes (names and values; past it HttpError 431: a header block the service
    refuses would end the gateway's connection to it, and every call on it)."""
    peer = environ.get("REMOTE_ADDR")
    if peer:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        pairs.append(("x-forwarded-for", f"{forwarded}, {peer}" if forwarded else peer))
    size = sum(len(name) + len(value) for name, value in pairs)
    if size > limit:
        raise HttpError(431, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the headers to pass on as metadata are {size} bytes, more than the "
                        f"{limit} accepted")
    return [metadata_pair(name, value) for name, value in pairs]


def _with_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """``start_response`` adding ``extra`` headers to every answer (CORS)."""
    def wrapped(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        return start_response(status, [*headers, *extra], *args)

    return wrapped


def _decode(data: bytes, message_class: Any, codec: str, max_depth: int) -> Any:
    """A request message of gRPC-Web's ``codec`` (``proto``, or ``json`` nested at most
    ``max_depth`` deep as the JSON routes' bodies)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    try:
        if codec == "json":
            value = json.loads(data)
            if not within_depth(value, max_depth):
                raise grpcweb.GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"the message is nested more than {max_depth} "
                                           "levels deep")
            return json_format.ParseDict(value, message_class())
        return message_class.FromString(data)
    except (DecodeError, json_format.ParseError, ValueError, RecursionError) as err:
        raise grpcweb.GrpcWebError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"the request message cannot be read: {err}") from None


def _encode_message(message: Any, codec: str) -> bytes:
    if codec == "json":
        return to_json(message).encode()
    return bytes(message.SerializeToString())


def _answer(start_response: StartResponse, http_status: int, body: bytes) -> list[bytes]:
    start_response(status_line(http_status),
                   [("Content-Type", JSON), ("Content-Length", str(len(body)))])
    return [body]


def _get_path(value: dict[str, Any], path: str) -> Any:
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return None
        value = value[name]
    return value


def _error(
    start_response: StartResponse, http_status: int, code: grpc.StatusCode, message: str,
    headers: list[tuple[str, str]] | None = None, details: Sequence[Any] = (),
) -> list[bytes]:
    body = error_json(code, message, details)
    start_response(status_line(http_status),
                   [("Content-Type", JSON), ("Content-Length", str(len(body))), *(headers or [])])
    return [body]
