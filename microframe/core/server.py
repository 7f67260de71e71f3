"""The server runtime: a grpc.aio server with the routes, health, reflection and a graceful stop.

Everything a call needs is built once in :meth:`Server.build`: one middleware chain per method,
one grpc method handler per method, registered with grpc's per-method lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from microframe.conf import dict_setting, global_settings
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.handlers import controller_handler, rebinder
from microframe.core.limits import (
    SERVICE_REPLY_FLOOR,
    CallLimits,
    CallTracker,
    ReceiveSlots,
    Watchdog,
)
from microframe.core.middleware import MiddlewareFactory, RequestObserver, build_chain
from microframe.core.router import Route
from microframe.core.serving import ServingProcess
from microframe.core.signals import (
    server_started,
    server_stopped,
    server_stopping,
    setting_changed,
)
from microframe.core.transport import Transport, choose_transport
from microframe.utils.memory import MemoryTrimmer
from microframe.utils.resources import connections_within_files_limit, raise_open_files_limit
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.server")

HEALTH_SERVICE = "grpc.health.v1.Health"
# grpcio-reflection serves the v1alpha protocol, which grpcurl, grpcui and Postman speak.
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection",)
#: Seconds before the end of the grace period at which the calls still running are cut (a
#: tenth of the grace period when that is shorter), and that grpc waits after it.
CUT_MARGIN = 1.0

#: The settings the middleware read when a chain is built: when one changes, the chains of
#: the servers serving are built again (:meth:`Server.rebuild_chains`).
CHAIN_SETTINGS = frozenset({"LIMITER", "ACCESS_LOG", "AUTH", "VALIDATION"})

#: The servers started and not yet stopping, in this process.
_serving: weakref.WeakSet[Server] = weakref.WeakSet()


def _rebuild_chains(sender: Any, *, setting: str, **kwargs: Any) -> None:
    """``setting_changed``: a setting the middleware read changed; rebuild the chains."""
    if setting in CHAIN_SETTINGS:
        for server in list(_serving):
            server.rebuild_chains()


setting_changed.connect(_rebuild_chains, weak=False)


def address_in_use(host: str, port: int) -> bool:
    """Tell whether another socket listens on ``host:port``, so that a server cannot bind it.

    Every address ``host`` resolves to is tried as grpc binds it (``SO_REUSEADDR``: a port
    whose last connections linger in TIME_WAIT is free). False when the host does not resolve
    or binding fails for another reason: the server's own bind reports those.
    """
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return True
    return False


#: The defaults of ``GRPC`` (``global_settings.GRPC``): a :class:`ServerConfig` built by hand
#: starts from them too.
DEFAULTS: dict[str, Any] = global_settings.GRPC


@dataclass
class ServerConfig:
    """What the runtime needs from settings, resolved once (see :meth:`from_settings`).

    Each field is the ``GRPC`` key of its name in upper case.
    """

    host: str = DEFAULTS["HOST"]
    port: int = DEFAULTS["PORT"]
    max_message_bytes: int = DEFAULTS["MAX_MESSAGE_BYTES"]
    max_concurrent_rpcs: int | None = DEFAULTS["MAX_CONCURRENT_RPCS"]
    max_calls_per_connection: int | None = DEFAULTS["MAX_CALLS_PER_CONNECTION"]
    max_streams_per_connection: int = DEFAULTS["MAX_STREAMS_PER_CONNECTION"]
    max_connections: int = DEFAULTS["MAX_CONNECTIONS"]
    max_metadata_bytes: int = DEFAULTS["MAX_METADATA_BYTES"]
    receive_buffer_bytes: int = DEFAULTS["RECEIVE_BUFFER_BYTES"]
    receive_timeout: float = DEFAULTS["RECEIVE_TIMEOUT"]
    stream_idle_timeout: float | None = DEFAULTS["STREAM_IDLE_TIMEOUT"]
    send_timeout: float = DEFAULTS["SEND_TIMEOUT"]
    stream_window_bytes: int = DEFAULTS["STREAM_WINDOW_BYTES"]
    handshake_timeout: float = DEFAULTS["HANDSHAKE_TIMEOUT"]
    keepalive_time: float | None = DEFAULTS["KEEPALIVE_TIME"]
    keepalive_timeout: float = DEFAULTS["KEEPALIVE_TIMEOUT"]
    grace: float = DEFAULTS["GRACE"]
    shutdown_delay: float = DEFAULTS["SHUTDOWN_DELAY"]
    health: bool = DEFAULTS["HEALTH"]
    reflection: bool = DEFAULTS["REFLECTION"]
    threads: int | None = DEFAULTS["THREADS"]
    tls: dict[str, Any] | None = DEFAULTS["TLS"]
    transport: str = DEFAULTS["TRANSPORT"]
    method_timeouts: dict[str, float] = field(default_factory=dict)
    reuse_port: bool = False
    options: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def from_settings(cls, **overrides: Any) -> ServerConfig:
        """Read ``GRPC`` (completed with its defaults), then apply ``overrides`` (fields)."""
        g = dict_setting("GRPC")
        config = cls(
            host=g["HOST"],
            port=int(g["PORT"]),
            max_message_bytes=int(g["MAX_MESSAGE_BYTES"]),
            max_concurrent_rpcs=g["MAX_CONCURRENT_RPCS"],
            max_calls_per_connection=g["MAX_CALLS_PER_CONNECTION"],
            max_streams_per_connection=int(g["MAX_STREAMS_PER_CONNECTION"]),
            max_connections=int(g["MAX_CONNECTIONS"]),
            max_metadata_bytes=int(g["MAX_METADATA_BYTES"]),
            receive_buffer_bytes=int(g["RECEIVE_BUFFER_BYTES"]),
            receive_timeout=float(g["RECEIVE_TIMEOUT"]),
            stream_idle_timeout=g["STREAM_IDLE_TIMEOUT"],
            send_timeout=float(g["SEND_TIMEOUT"]),
            stream_window_bytes=int(g["STREAM_WINDOW_BYTES"]),
            handshake_timeout=float(g["HANDSHAKE_TIMEOUT"]),
            keepalive_time=g["KEEPALIVE_TIME"],
            keepalive_timeout=float(g["KEEPALIVE_TIMEOUT"]),
            grace=float(g["GRACE"]),
            shutdown_delay=float(g["SHUTDOWN_DELAY"]),
            health=bool(g["HEALTH"]),
            reflection=bool(g["REFLECTION"]),
            threads=g["THREADS"],
            transport=str(g["TRANSPORT"]),
            tls=g["TLS"],
            method_timeouts=method_timeouts(g["METHOD_TIMEOUTS"]),
            options=[tuple(o) for o in g["OPTIONS"]],  # type: ignore[misc]
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        return config

    def method_timeout(self, full_method: str) -> float | None:
        """Return the cap of ``full_method`` (``/pkg.Service/Method``) in ``method_timeouts``:
        its own entry, else its service's (``/pkg.Service/*``), else None."""
        table = self.method_timeouts
        if not table:
            return None
        cap = table.get(full_method)
        if cap is None:
            cap = table.get(full_method[: full_method.rfind("/") + 1] + "*")
        return cap

    def channel_options(self) -> list[tuple[str, Any]]:
        """Return the grpc core arguments of the server (``GRPC["OPTIONS"]`` overrides them).

        - The pending-call queue: grpc core keeps calls that arrived before the application
          asked for them in a queue and cancels what overflows it (1,000 soft / 3,000 hard by
          default), which is how a bare grpc.aio server silently CANCELs part of a burst. It is
          sized far above MAX_CONCURRENT_RPCS instead, so every call of a burst reaches the
          application, which serves it or refuses it with RESOURCE_EXHAUSTED.
        - Memory a client can make the server hold: the stream window is fixed at
          STREAM_WINDOW_BYTES (BDP probing off: it grows every stream's window to megabytes,
          whether the application reads or not), so a call costs at most its window until
          the application reads its message (:class:`~microframe.core.limits.ReceiveSlots`);
          streams per connection are capped (SETTINGS_MAX_CONCURRENT_STREAMS, excess streams
          refused), header blocks too (the soft and hard limits equal, so that a block over
          it is always refused, not at random between the two), and connections.
        - Time: a connection must finish its handshake (and HTTP/2 preface) within
          HANDSHAKE_TIMEOUT; keepalive pings close connections whose peer is gone.
        """
        pending = max(10_000, 10 * (self.max_concurrent_rpcs or 0))
        base: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", max(self.max_message_bytes, SERVICE_REPLY_FLOOR)),
            ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ("grpc.server.max_pending_requests", pending),
            ("grpc.server.max_pending_requests_hard_limit", pending),
            ("grpc.max_unrequested_time_in_server", 3600),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            (
                "grpc.max_allowed_incoming_connections",
                connections_within_files_limit(self.max_connections),
            ),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", self.stream_window_bytes),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
        ]
        if self.keepalive_time:
            base += [
                ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ]
        overridden = {key for key, _ in self.options}
        return [o for o in base if o[0] not in overridden] + list(self.options)

    def call_limits(self) -> CallLimits:
        """Return the limits the method handlers enforce (see :mod:`microframe.core.limits`)."""
        per_connection = self.max_calls_per_connection
        if per_connection is None and self.max_concurrent_rpcs is not None:
            per_connection = max(1, self.max_concurrent_rpcs // 4)
        slots = ReceiveSlots.for_budget(self.receive_buffer_bytes, self.max_message_bytes)
        return CallLimits(
            calls=CallTracker(self.max_concurrent_rpcs, per_connection),
            slots=slots,
            watchdog=Watchdog(slots),
            receive_timeout=self.receive_timeout,
            stream_idle_timeout=self.stream_idle_timeout,
            send_timeout=self.send_timeout,
            max_reply_bytes=self.max_message_bytes,
        )


def method_timeouts(table: Any) -> dict[str, float]:
    """Return ``GRPC["METHOD_TIMEOUTS"]`` as a dict of method names to seconds; raise
    ImproperlyConfigured when it is no dict or a cap is not a positive number (the checks say
    so before the server starts: ``microframe.E001`` and ``E014``, and ``E015`` for a name
    that is no method of the router)."""
    if not isinstance(table, dict):
        raise ImproperlyConfigured(
            'GRPC["METHOD_TIMEOUTS"] must be a dict of method names to seconds, not '
            f"{table!r}."
        )
    caps: dict[str, float] = {}
    for name, cap in table.items():
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
            raise ImproperlyConfigured(
                f'GRPC["METHOD_TIMEOUTS"][{name!r}] must be a positive number of seconds, '
                f"not {cap!r}."
            )
        caps[str(name)] = float(cap)
    return caps


class Server:
    """A gRPC server serving ``routes`` through ``middleware``, on ``transport`` (grpc.aio by
    default: :mod:`microframe.core.transport`).

    ``start()`` binds and serves; ``stop()`` marks health NOT_SERVING, stops accepting and
    lets in-flight calls finish for the grace period. ``process`` is runserver's description
    of the process this server serves in (None for a server a program or a test starts): the
    batteries receiving the server's signals read it (:mod:`microframe.core.signals`).
    """

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        middleware: Sequence[str | MiddlewareFactory] = (),
        config: ServerConfig | None = None,
        process: ServingProcess | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.routes = list(routes)
        self.process = process
        self.middleware = list(middleware)
        self.config = config or ServerConfig()
        if transport is None:
            transport, self.transport_reason = choose_transport(self.config)
        else:
            self.transport_reason = "given to the server"
        self.transport: Transport = transport
        self.executor = ThreadPoolExecutor(
            max_workers=self.config.threads, thread_name_prefix="microframe-controller"
        )
        self.chains: dict[str, Any] = {}
        self._rebinders: dict[str, Any] = {}
        self.middleware_in_use: dict[str, list[str]] = {}
        self.grpc_server: grpc.aio.Server | None = None
        self.health: Any = None
        self.port: int | None = None
        self.limits = self.config.call_limits()
        self.calls = self.limits.calls
        self.memory = MemoryTrimmer()
        self._stopping: asyncio.Event | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port if self.port is not None else self.config.port}"

    @property
    def service_names(self) -> list[str]:
        return sorted({route.service for route in self.routes})

    def build(self) -> grpc.aio.Server:
        """Build the chains, the method handlers and the grpc server (once).

        A method ``GRPC["METHOD_TIMEOUTS"]`` caps (``config.method_timeout``) is built with
        its cap (``route.timeout``): its handlers enforce it, its calls' contexts tell it;
        the other methods' handlers are built as if caps did not exist.

        Call it with the event loop running: a grpc.aio server belongs to the loop it is
        created on.
        """
        if self.grpc_server is not None:
            return self.grpc_server
        raise_open_files_limit()
        transport = self.transport
        server = transport.create(self.config)
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for index, route in enumerate(self.routes):
            cap = self.config.method_timeout(route.full_method)
            if cap is not None and cap != route.timeout:
                # The cap travels with the route: its terminal handler, its method handler
                # and its calls' contexts are built for it (microframe.core.handlers).
                route = self.routes[index] = dataclasses.replace(route, timeout=cap)
            chain, used, observers = self._build_chain(route)
            self.chains[route.full_method] = chain
            self.middleware_in_use[route.full_method] = used
            handler = transport.method_handler(route, chain, self.limits, observers)
            self._rebinders[route.full_method] = rebinder(handler)
            by_service.setdefault(route.service, {})[route.method] = handler
        for service, handlers in by_service.items():
            server.add_registered_method_handlers(service, handlers)
        names = self.service_names
        if self.config.health:
            from grpc_health.v1 import _async as health_aio
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            self.health = health_aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            self._health_pb2 = health_pb2
            names.append(HEALTH_SERVICE)
        if self.config.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection([*names, *REFLECTION_SERVICES], server)
        self.grpc_server = server
        return server

    def _build_chain(self, route: Route) -> tuple[Any, list[str], list[RequestObserver]]:
        observers: list[RequestObserver] = []
        terminal = controller_handler(route, self.executor)
        chain, used = build_chain(route, terminal, self.middleware, observers)
        return chain, used, observers

    def rebuild_chains(self) -> None:
        """Build every method's middleware chain again from the current settings, and serve
        the calls that start from now on through them (the settings of :data:`CHAIN_SETTINGS`
        changed: the configuration center's hot reload, ``override_settings``).

        All chains are built before any is swapped in: when one cannot be built (a middleware
        refuses the new settings) the error propagates and every method keeps its chain. The
        calls in flight finish on the chains they started with.
        """
        if self.grpc_server is None:
            return
        built = {route.full_method: self._build_chain(route) for route in self.routes}
        for method, (chain, used, observers) in built.items():
            rebind = self._rebinders.get(method)
            if rebind is None:
                continue
            rebind(chain, observers)
            self.chains[method] = chain
            self.middleware_in_use[method] = used
        logger.debug("middleware chains of %d methods rebuilt", len(built))

    async def _set_health(self, serving: bool) -> None:
        if self.health is None:
            return
        status = (
            self._health_pb2.HealthCheckResponse.SERVING
            if serving
            else self._health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> int:
        """Bind, start serving, mark health SERVING; return the bound port."""
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        address = f"{host}:{self.config.port}"
        port = self.config.port
        if port and not self.config.reuse_port and address_in_use(host, port):
            # Told before grpc tries (its own error names no cause, and logs a line of its own).
            raise OSError(errno.EADDRINUSE, f"{address} is already in use")
        server = self.build()
        try:
            port = self.transport.listen(server, address, self.config)
        except RuntimeError as err:
            raise OSError(f"cannot listen on {address}: {err} (is the port in use?)") from err
        self.port = port
        self._stopping = asyncio.Event()
        await server.start()
        _serving.add(self)
        self.memory.start()
        await self._set_health(True)
        await server_started.asend(self.__class__, server=self, address=self.address)
        logger.info("transport %s (%s)", self.transport.name, self.transport_reason)
        for setting, instead in self.transport.differences(self.config):
            logger.warning(
                'transport %s: GRPC["%s"] is not applied as on grpc.aio: %s '
                "(docs/topics/transport.md)", self.transport.name, setting, instead,
            )
        logger.info(
            "serving %d methods of %s on %s (pid %d)",
            len(self.routes),
            ", ".join(self.service_names) or "no service",
            self.address,
            os.getpid(),
        )
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully.

        1. health NOT_SERVING and the ``server_stopping`` signal (the registry deregisters);
        2. keep serving for ``GRPC["SHUTDOWN_DELAY"]`` seconds, so that clients that follow
           health or the registry move away before the port closes;
        3. stop accepting and let the calls in flight finish for up to ``grace`` seconds, as
           the transport can without a call lost (:meth:`Transport.stop
           <microframe.core.transport.Transport.stop>`): a call that reaches the application
           meanwhile is refused UNAVAILABLE, before anything ran;
        4. answer the calls still running just before ``grace`` ends (a tenth of it, at most a
           second, before): their handlers ran, so they are answered UNAVAILABLE with the
           handled mark, which microframe's client never retries (the work may have been
           done); grpc would cancel them, and a client could not tell that they ran;
        5. log how many accepted calls completed.
        """
        if self._stopped or self.grpc_server is None:
            return
        self._stopped = True
        _serving.discard(self)
        grace = self.config.grace if grace is None else grace
        logger.info("stopping: draining in-flight calls for up to %.1f s", grace)
        await self._set_health(False)
        await server_stopping.asend(self.__class__, server=self)
        if self.config.shutdown_delay > 0:
            logger.info(
                "still serving for %.1f s (SHUTDOWN_DELAY) while clients move away",
                self.config.shutdown_delay,
            )
            await asyncio.sleep(self.config.shutdown_delay)
        running = self.calls.active

        async def drain() -> None:
            self.calls.closing = True  # a call reaching the application now is refused
            accepted = list(self.calls.tasks)
            try:
                cut_at = max(0.0, grace - min(CUT_MARGIN, grace / 10))
                await with_timeout(self.calls.wait_idle(), cut_at)
            except TimeoutError:
                cut = self.calls.cut()
                logger.warning(
                    "%d call(s) still running after the %.1f s grace period were cut: answered "
                    "UNAVAILABLE, marked as handled (not to be retried)", cut, grace,
                )
            # A call's status is sent by its task once the handler has returned: the drain
            # ends when those have gone out too (the transport may close the connections).
            unfinished = [task for task in accepted if not task.done()]
            if unfinished:
                await asyncio.wait(unfinished, timeout=CUT_MARGIN)

        assert self.port is not None
        await self.transport.stop(self.grpc_server, self.port, drain)
        await self.memory.stop()
        self.limits.watchdog.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._stopping is not None:
            self._stopping.set()
        left = self.calls.active
        if left:
            logger.warning(
                "stopped: %d call(s) had not ended after the %.1f s grace period "
                "(%d accepted in all)",
                left, grace, self.calls.accepted,
            )
        else:
            logger.info(
                "stopped: %d call(s) accepted, all completed (%d were in flight at the stop)",
                self.calls.accepted, running,
            )
        await server_stopped.asend(self.__class__, server=self)

    async def serve_until_signal(
        self,
        signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
        on_started: Callable[[], None] | None = None,
    ) -> None:
        """Start, then serve until one of ``signals`` arrives; stop gracefully.

        A signal arriving while the server stops (CONTROL-C reaches every process of the
        terminal's group, a supervisor forwards SIGTERM too) is noted and ignored: the drain
        goes on. The handlers are removed once the server has stopped.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(sig: int) -> None:
            if stop_requested.is_set():
                name = signal.Signals(sig).name
                logger.info("%s received while stopping: the drain goes on", name)
            stop_requested.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.start()
            if on_started is not None:
                on_started()
            try:
                await stop_requested.wait()
            finally:
                await self.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
