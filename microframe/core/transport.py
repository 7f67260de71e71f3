"""The transport: what carries gRPC between the sockets and the server runtime.

The runtime (:class:`~microframe.core.server.Server`) builds the middleware chains and the
method handlers' logic; the transport makes the grpc server object those handlers are
registered on, says how a method is registered, and listens. It is the one seam where another
transport plugs in: the runtime holds no ``if`` on which one it runs on.

:class:`GrpcAioTransport` is grpc.aio: grpc core's HTTP/2 and the server arguments of
:meth:`~microframe.core.server.ServerConfig.channel_options`. Methods that take one request
message are registered request-streaming, so that a truncated or oversized request is
answered by microframe rather than dropped by grpc (see :mod:`microframe.core.handlers`).

:class:`NativeTransport` is ``pygrpc_native.aio.server()`` (the ``native`` extra): HTTP/2 and
gRPC framing in Rust, the calls handed to the event loop in batches. It serves methods that
take one request message natively, registered unary (the request handed over whole, as
bytes); request-streaming methods, health and reflection go to the grpc.aio server it runs
behind itself. Some limits of ``GRPC`` it applies in its own way, or not at all
(:func:`native_differences`); ``GRPC["TRANSPORT"] = "auto"`` picks it only when there are none.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio

from microframe.core.connection_guard import ConnectionGuard, GuardLimits, RequestLedger
from microframe.core.context import RequestContext
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.handlers import grpc_method_handler

if TYPE_CHECKING:
    from microframe.core.limits import CallLimits
    from microframe.core.middleware import Handler, RequestObserver
    from microframe.core.router import Route
    from microframe.core.server import ServerConfig

__all__ = [
    "GrpcAioTransport",
    "NativeTransport",
    "TRANSPORTS",
    "Transport",
    "choose_transport",
    "native_available",
    "native_differences",
    "server_credentials",
    "shut_down_connections",
]


class Transport(Protocol):
    """What the server runtime needs of a transport."""

    #: The name the logs and the checks show (``"grpc.aio"``).
    name: str

    def create(self, config: ServerConfig) -> grpc.aio.Server:
        """The grpc server object, with ``config``'s limits; on the running event loop."""
        ...

    def method_handler(
        self,
        route: Route,
        chain: Handler,
        limits: CallLimits,
        observers: Sequence[RequestObserver],
    ) -> grpc.RpcMethodHandler:
        """The handler ``route`` is registered with, serving ``chain`` within ``limits``."""
        ...

    def listen(self, server: grpc.aio.Server, address: str, config: ServerConfig) -> int:
        """Listen on ``address`` (with ``config.tls`` when set); return the port bound."""
        ...

    def differences(self, config: ServerConfig) -> list[tuple[str, str]]:
        """The ``GRPC`` settings of ``config`` this transport does not apply as grpc.aio does
        (``(setting, what it does instead)``): the server logs each as a warning at start."""
        ...

    async def stop(
        self, server: grpc.aio.Server, port: int, drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Stop ``server`` (listening on ``port``) without losing a call: every call a client
        sent is answered, or refused UNAVAILABLE before the application saw it, never
        CANCELLED. ``drain()`` refuses the calls that reach the application from now on and
        returns once the accepted ones have ended (those still running near the end of the
        grace period cut); the server must be stopped a moment after it returns."""
        ...


logger = logging.getLogger("microframe.server")

#: How long the server object is given to stop once the application has drained (the
#: answers of the calls cut at the end of the grace period may still be leaving).
STOP_MARGIN = 1.0

#: How long the transport is given to write the last answers of a drained server before its
#: connections are closed (Transport.stop); calls arriving meanwhile are refused.
FLUSH_TIME = 0.1

#: The values of GRPC["TRANSPORT"] (and of runserver's --transport).
TRANSPORTS = ("auto", "grpc.aio", "native")

#: Seconds pygrpc-native gives a connection to send its HTTP/2 preface (not configurable).
NATIVE_PREFACE_TIMEOUT = 120.0

#: The server arguments of ServerConfig.channel_options() the native transport refuses (its
#: connection guard caps connections, from MAX_CONNECTIONS); a GRPC["OPTIONS"] asking for
#: them is reported by native_differences().
NATIVE_REFUSED_OPTIONS = frozenset({"grpc.max_allowed_incoming_connections"})


def native_available() -> bool:
    """Whether the native transport (package ``pygrpc-native``) is installed."""
    import importlib.util

    return importlib.util.find_spec("pygrpc_native") is not None


def native_differences(config: ServerConfig) -> list[tuple[str, str]]:
    """The ``GRPC`` settings of ``config`` the native transport does not apply:
    ``(setting, what it does instead)``, empty when it applies them all.

    ``MAX_CONNECTIONS``, ``HANDSHAKE_TIMEOUT``, ``RECEIVE_TIMEOUT`` and
    ``RECEIVE_BUFFER_BYTES`` are applied by its connection guard (it closes the connection
    that breaks them, :mod:`microframe.core.connection_guard`), and what
    ``STREAM_WINDOW_BYTES`` protects (the memory of messages not yet whole) by the same
    guard's budget; none of them is a difference."""
    found: list[tuple[str, str]] = []
    if config.tls:
        found.append(("TLS", "it serves plaintext only"))
    if config.handshake_timeout > NATIVE_PREFACE_TIMEOUT:
        found.append((
            "HANDSHAKE_TIMEOUT",
            f"a connection has {NATIVE_PREFACE_TIMEOUT:g} s to finish its HTTP/2 preface",
        ))
    names = {key for key, _ in config.options}
    for option in sorted(names & NATIVE_REFUSED_OPTIONS):
        found.append(("OPTIONS", f"it refuses {option}"))
    return found


def choose_transport(config: ServerConfig) -> tuple[Transport, str]:
    """The transport ``config.transport`` names, and why (for the log and ``check``).

    ``"auto"``: native when it is installed and :func:`native_differences` finds nothing,
    else grpc.aio. ImproperlyConfigured for an unknown name, or ``"native"`` not installed.
    """
    choice = config.transport
    if choice == "grpc.aio":
        return GrpcAioTransport(), 'GRPC["TRANSPORT"] is "grpc.aio"'
    if choice == "native":
        if not native_available():
            raise ImproperlyConfigured(
                'GRPC["TRANSPORT"] is "native" but pygrpc-native is not installed: '
                'pip install "microframe-grpc[native]".'
            )
        return NativeTransport(), 'GRPC["TRANSPORT"] is "native"'
    if choice != "auto":
        raise ImproperlyConfigured(
            f'GRPC["TRANSPORT"] must be "auto", "grpc.aio" or "native", not {choice!r}.'
        )
    if not native_available():
        return GrpcAioTransport(), "auto: the native extra is not installed"
    differences = native_differences(config)
    if differences:
        names = ", ".join(dict.fromkeys(name for name, _ in differences))
        return GrpcAioTransport(), f"auto: the native transport does not apply GRPC {names}"
    return NativeTransport(), "auto: the native extra is installed and applies every limit set"


class GrpcAioTransport:
    """grpc.aio, grpc core's own HTTP/2."""

    name = "grpc.aio"

    def create(self, config: ServerConfig) -> grpc.aio.Server:
        # MAX_CONCURRENT_RPCS is enforced by the method handlers, not by grpc (which would
        # refuse health checks and reflection too): see microframe.core.limits.
        return grpc.aio.server(options=config.channel_options())

    #: The request context of the calls the transport hands over (``hands_over_requests``).
    context_class: type[RequestContext] = RequestContext

    #: Whether a method of one request message is registered unary, the transport handing the
    #: message over (bytes), instead of request-streaming and read with ``context.read()``.
    hands_over_requests = False

    def method_handler(
        self,
        route: Route,
        chain: Handler,
        limits: CallLimits,
        observers: Sequence[RequestObserver],
    ) -> grpc.RpcMethodHandler:
        given = self.hands_over_requests and not route.kind.client_streaming
        return grpc_method_handler(
            route, chain, limits, observers, request_given=given,
            context_class=self.context_class if given else RequestContext,
        )

    def differences(self, config: ServerConfig) -> list[tuple[str, str]]:
        return []

    def listen(self, server: grpc.aio.Server, address: str, config: ServerConfig) -> int:
        if config.tls:
            return server.add_secure_port(address, server_credentials(config.tls))
        return server.add_insecure_port(address)

    async def stop(
        self, server: grpc.aio.Server, port: int, drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Drain, give the last answers a moment to leave, close the connections, then stop
        the grpc server.

        grpc core's stop cannot be the first step: in the same instant as it sends its GOAWAY
        it cancels every call that reached it but that grpc.aio (which asks for one call at a
        time) had not yet taken (grpc issues 41785 and 24237), and a client busy calling always
        has one such call: 6-7 CANCELLED in every run of 8 plain clients under SIGTERM
        (tests/core/test_lifecycle.py). So the server keeps accepting while the application
        drains, refusing every new call UNAVAILABLE; then the connections are closed
        (:meth:`close_connections`: a call in transit fails UNAVAILABLE at its client, which
        may retry it, it never ran) and grpc stops with nothing left to cancel. The last
        answers' frames are written by the transport's threads after their calls have ended,
        and nothing says when they have left: they get ``FLUSH_TIME`` before the cut."""
        await drain()
        await asyncio.sleep(FLUSH_TIME)
        self.close_connections(port)
        await server.stop(STOP_MARGIN)

    def close_connections(self, port: int) -> None:
        """Shut down the connections accepted on ``port`` (:func:`shut_down_connections`)."""
        closed = shut_down_connections(port)
        logger.debug("stopping: %d connection(s) shut down", closed)

    def __repr__(self) -> str:
        return f"<transport {self.name}>"


def shut_down_connections(port: int) -> int:
    """Shut down (both ways) the TCP connections this process accepted on ``port``; return
    how many. Their file descriptors stay open for their owner (grpc core), which sees them
    end as if the client had gone.

    grpc.aio has no API to close its connections short of stopping (see
    :meth:`GrpcAioTransport.stop`); the connections are found with ``psutil`` (the process's
    own sockets, with their file descriptors) and shut down through a duplicate descriptor."""
    import psutil

    closed = 0
    for conn in psutil.Process().net_connections("tcp"):
        if conn.status != psutil.CONN_ESTABLISHED or conn.fd < 0 or not conn.laddr:
            continue
        if conn.laddr.port != port:
            continue
        try:
            with socket.socket(fileno=os.dup(conn.fd)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
            closed += 1
        except OSError:  # closed meanwhile
            continue
    return closed


def server_credentials(tls: dict[str, Any]) -> grpc.ServerCredentials:
    """The credentials of ``GRPC["TLS"]`` (``CERT``, ``KEY``, and ``CLIENT_CA`` to require
    client certificates); ImproperlyConfigured when a file cannot be read."""
    try:
        with open(tls["CERT"], "rb") as f:
            cert = f.read()
        with open(tls["KEY"], "rb") as f:
            key = f.read()
        client_ca = None
        if tls.get("CLIENT_CA"):
            with open(tls["CLIENT_CA"], "rb") as f:
                client_ca = f.read()
    except (KeyError, OSError) as err:
        raise ImproperlyConfigured(f'GRPC["TLS"] is unusable: {err}') from err
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class NativeRequestContext(RequestContext):
    """The request context of a call the native transport serves: it reads the incoming
    metadata as the transport received it, in pairs.

    pygrpc-native's ``invocation_metadata()`` makes a named tuple of every pair, on every call
    it is asked: under load with tracing on (which looks for a caller's trace context in
    every call's metadata), 8 % of the event loop's time (bench/profile.py). The pairs are its
    call's ``metadata``, read here when the installed version has them."""

    __slots__ = ()

    @property
    def metadata(self) -> dict[str, str]:
        if self._metadata is None:
            pairs = getattr(getattr(self.grpc, "_call", None), "metadata", None)
            if pairs is None:
                pairs = self.grpc.invocation_metadata() or ()
            self._metadata = dict(pairs)
        return self._metadata


class CountedHandlers:
    """Makes the handlers the server runtime did not build (health, reflection) count their
    requests in a :class:`~microframe.core.connection_guard.RequestLedger`. A method of one
    request message counts it with its connection (the behaviour wrapped: the request's
    size, its metadata); a request-streaming one, served by the fallback behind a Unix
    socket, through its deserializer, ``elsewhere``. The runtime's own handlers count their
    requests themselves (``taken``)."""

    def __init__(self, ledger: RequestLedger) -> None:
        self.ledger = ledger

    def method(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        if parse is None:  # the runtime's own: it counts its requests itself
            return handler
        if handler.request_streaming:
            elsewhere = self.ledger.took_elsewhere

            def deserialize(message: bytes) -> Any:
                elsewhere(len(message))
                return parse(message)

            return handler._replace(request_deserializer=deserialize)  # type: ignore[attr-defined,no-any-return]
        took = self.ledger.took

        def count(request: Any, context: Any) -> None:
            size = request.ByteSize() if hasattr(request, "ByteSize") else len(request)
            call = getattr(context, "_call", None)
            took(context.peer(), size, getattr(call, "metadata", None) or ())

        if handler.response_streaming:
            return handler._replace(unary_stream=_counting(handler.unary_stream, count))  # type: ignore[attr-defined,no-any-return]
        return handler._replace(unary_unary=_counting(handler.unary_unary, count))  # type: ignore[attr-defined,no-any-return]

    def generic(self, handler: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
        return _CountedService(handler, self)

    def install(self, server: Any) -> None:
        """Count the handlers registered on ``server`` from now on (grpc's own helpers, as
        ``add_HealthServicer_to_server``, call its registration methods themselves)."""
        register = server.add_registered_method_handlers
        register_generic = server.add_generic_rpc_handlers

        def add_registered(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            register(service, {name: self.method(h) for name, h in handlers.items()})

        def add_generic(handlers: Sequence[grpc.GenericRpcHandler]) -> None:
            register_generic([self.generic(h) for h in handlers])

        server.add_registered_method_handlers = add_registered
        server.add_generic_rpc_handlers = add_generic


def _counting(
    behavior: Callable[..., Any], count: Callable[[Any, Any], None]
) -> Callable[..., Any]:
    """``behavior`` (a coroutine, async generator or plain function, as grpc takes them),
    calling ``count(request, context)`` first."""
    if inspect.isasyncgenfunction(behavior):

        async def streamed(request: Any, context: Any) -> Any:
            count(request, context)
            async for reply in behavior(request, context):
                yield reply

        return streamed
    if inspect.iscoroutinefunction(behavior):

        async def answered(request: Any, context: Any) -> Any:
            count(request, context)
            return await behavior(request, context)

        return answered

    def called(request: Any, context: Any) -> Any:
        count(request, context)
        return behavior(request, context)

    return called


class _CountedService(grpc.ServiceRpcHandler):
    """A generic handler whose method handlers are counted (:class:`CountedHandlers`); a
    service handler still (pygrpc-native recognises the services it also registered)."""

    def __init__(self, inner: grpc.GenericRpcHandler, counted: CountedHandlers) -> None:
        self.inner, self.counted = inner, counted

    def service_name(self) -> str:
        name = getattr(self.inner, "service_name", None)
        return name() if name is not None else ""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self.inner.service(handler_call_details)
        return None if handler is None else self.counted.method(handler)


class NativeTransport(GrpcAioTransport):
    """pygrpc-native: HTTP/2 in Rust for the methods that take one request message, which
    are registered unary (served natively); the rest as on grpc.aio, through its fallback.

    Its front has no limit on connections and holds a request message until it is whole:
    :class:`~microframe.core.connection_guard.ConnectionGuard` applies ``MAX_CONNECTIONS``,
    ``HANDSHAKE_TIMEOUT``, ``RECEIVE_TIMEOUT`` and ``RECEIVE_BUFFER_BYTES`` to its
    connections, counting what the application is handed from each
    (:class:`~microframe.core.connection_guard.RequestLedger`)."""

    name = "native"
    hands_over_requests = True
    context_class = NativeRequestContext

    def __init__(self) -> None:
        self.ledger = RequestLedger()
        self.guard: ConnectionGuard | None = None

    def create(self, config: ServerConfig) -> grpc.aio.Server:
        import pygrpc_native.aio

        if config.tls:
            raise ImproperlyConfigured(
                'GRPC["TLS"] is set but the native transport serves plaintext only: set '
                'GRPC["TRANSPORT"] = "grpc.aio" (or "auto").'
            )
        options = [o for o in config.channel_options() if o[0] not in NATIVE_REFUSED_OPTIONS]
        server = pygrpc_native.aio.server(options=options)
        CountedHandlers(self.ledger).install(server)
        return server  # type: ignore[no-any-return]

    def method_handler(
        self,
        route: Route,
        chain: Handler,
        limits: CallLimits,
        observers: Sequence[RequestObserver],
    ) -> grpc.RpcMethodHandler:
        ledger = self.ledger
        if route.kind.client_streaming:  # served by the fallback, behind a Unix socket

            def taken(ctx: RequestContext, message: bytes) -> None:
                ledger.took_elsewhere(len(message))

            return grpc_method_handler(route, chain, limits, observers, taken=taken)
        took = ledger.took

        def taken_here(ctx: RequestContext, message: bytes) -> None:
            call = getattr(ctx.grpc, "_call", None)
            took(ctx.peer, len(message), getattr(call, "metadata", None) or ())

        return grpc_method_handler(
            route, chain, limits, observers, request_given=True,
            context_class=self.context_class, taken=taken_here,
        )

    def listen(self, server: grpc.aio.Server, address: str, config: ServerConfig) -> int:
        port = super().listen(server, address, config)
        self.guard = ConnectionGuard(port, GuardLimits.from_config(config), self.ledger)
        self.guard.start()
        return port

    async def stop(
        self, server: grpc.aio.Server, port: int, drain: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await super().stop(server, port, drain)
        finally:
            if self.guard is not None:
                self.guard.stop()

    def differences(self, config: ServerConfig) -> list[tuple[str, str]]:
        return native_differences(config)

    def close_connections(self, port: int) -> None:
        """Nothing: the native server's own stop closes its front. That stop waits for the
        calls it handed over, then closes at once, dropping what it had not yet written: the
        end and trailers of a stream that had just ended were lost to about one stop in four
        when it began with the drain (tests/core/test_lifecycle.py); after the drain and
        ``FLUSH_TIME``, as on grpc.aio, it loses nothing."""
