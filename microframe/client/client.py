"""``Client``: call the methods of a service by its registered name.

::

    from microframe.client import Client

    client = Client("hello", timeout=0.5)
    reply = await client.unary(
        "/helloworld.Greeter/SayHello", HelloRequest(name="Ada"), HelloReply
    )

Every call goes through the client middleware chain (``CLIENT_MIDDLEWARE``): the deadline and
metadata are prepared, metrics recorded, the instances found through discovery, the call
retried where it is safe (each attempt on an instance the balancer chooses for it), and made
over a channel shared by every client of the event loop. Errors are raised as microframe's
:class:`~microframe.core.exceptions.RpcError` subclasses (``Unavailable``, ``NotFound``...), with
the status code, message and trailing metadata of the answer; a controller that lets one through
answers its own caller with the same code.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from microframe.client.balancers import Balancer, make_balancer
from microframe.client.call import ClientCall, ClientHandler
from microframe.client.channels import get_channel_pool
from microframe.client.membership import Membership
from microframe.client.options import ClientOptions
from microframe.client.outliers import Ejections, RetryBudget
from microframe.client.transport import connection_handler
from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.router import RpcKind
from microframe.core.signals import setting_changed
from microframe.utils.module_loading import import_string

#: The chain when the settings are not configured: the default of ``CLIENT_MIDDLEWARE``.
DEFAULT_CLIENT_MIDDLEWARE = global_settings.CLIENT_MIDDLEWARE


logger = logging.getLogger("microframe.client")

#: Every client of the process (to apply a change of ``CLIENTS``).
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _reconfigure_clients(sender: Any, *, setting: str, **kwargs: Any) -> None:
    """``setting_changed``: ``CLIENTS`` changed; every client resolves its options again.
    A client whose new options are invalid keeps its options, with an error logged (the
    configuration center checks a new ``CLIENTS`` before it applies it: ``client.E001``)."""
    if setting == "CLIENTS":
        for client in list(_clients):
            try:
                client.reconfigure()
            except ImproperlyConfigured as err:
                logger.error("the client of %s keeps its options: %s", client.service, err)


setting_changed.connect(_reconfigure_clients, weak=False)


def _middleware_setting() -> list[Any]:
    from microframe.conf import settings

    try:
        return list(getattr(settings, "CLIENT_MIDDLEWARE", DEFAULT_CLIENT_MIDDLEWARE))
    except ImproperlyConfigured:
        return list(DEFAULT_CLIENT_MIDDLEWARE)


class LoopDiscovery:
    """The discovery cache of the running event loop, for a client given none: a client may
    serve calls on several loops over its life (``asyncio.run`` twice, the blocking facade's
    loop), and each loop has its own cache."""

    def __init__(self) -> None:
        from microframe.discovery.cache import get_discovery_cache

        self._cache = get_discovery_cache

    def instances(self, service: str) -> Any:
        return self._cache().instances(service)

    def subscribe(self, service: str, listener: Callable[[str, list[Any]], None]) -> None:
        self._cache().subscribe(service, listener)


def _keywords_for(factory: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``factory`` accepts out of ``given``: all of them when it takes
    ``**kwargs`` (the documented contract), else the ones it names, so that a middleware
    written for fewer keywords (``next, *, client, method, kind``) keeps working as more are
    given."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return given
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return given
    names = {p.name for p in parameters}
    return {key: value for key, value in given.items() if key in names}


class Client:
    """A client of the service registered as ``service`` (options: see ``ClientOptions``).

    ``address`` (``"host:port"`` or a list of them) skips the registry: the calls go to those
    addresses, still through the whole chain. ``discovery`` replaces the event loop's discovery
    cache with any object that has ``async instances(service)`` and ``subscribe(service, fn)``.
    """

    def __init__(
        self,
        service: str,
        *,
        middleware: list[Any] | None = None,
        discovery: Any = None,
        address: str | Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        if address is not None:
            if discovery is not None:
                raise ValueError("give either address or discovery, not both")
            from microframe.client.direct import DirectDiscovery

            discovery = DirectDiscovery(address)
        self.service = service
        self._given = options
        self.options = ClientOptions.resolve(service, **options)
        self.balancer: Balancer = make_balancer(self.options.balancer)
        retry = self.options.retry
        self.retry_budget = RetryBudget(retry.budget_ratio, retry.budget_min_per_second)
        self.ejections = Ejections()
        self.membership = Membership(
            ejections=self.ejections,
            balancer=self.balancer,
            release=self._release,
            subset_size=self.options.subset_size,
            subset_key=self.options.subset_key,
            probe=self._probe,
            has_channel=lambda address: get_channel_pool().has(address),
        )
        self.ejections.prober = self.membership.probe_instance
        self._middleware = middleware if middleware is not None else _middleware_setting()
        self._discovery = discovery
        # (method as given, kind) -> (its handler, its /package.Service/Method path)
        self._chains: dict[tuple[str, RpcKind], tuple[ClientHandler, str]] = {}
        # What the channel pool is given besides the address, on every call: worked out once.
        self._channel_args = (self.options.channel_options, self.options.tls, service)
        _clients.add(self)

    def reconfigure(self) -> None:
        """Resolve the options again (``CLIENTS`` changed) and build the chains anew on the
        next call of each method; the calls in flight finish on what they started with.

        What the client built once stays: its balancer, membership, channels and TLS (the
        configuration center applies a change of those at the next restart,
        :mod:`microframe.contrib.config.live`). The retry budget takes its new ratio; the
        breakers, shared by the clients of the process, their new thresholds.
        """
        options = ClientOptions.resolve(self.service, **self._given)
        retry = options.retry
        if (retry.budget_ratio, retry.budget_min_per_second) != (
            self.options.retry.budget_ratio, self.options.retry.budget_min_per_second
        ):
            self.retry_budget = RetryBudget(retry.budget_ratio, retry.budget_min_per_second)
        self.options = options
        self._chains = {}

    # -- what the chain uses -------------------------------------------------------------------

    def discovery(self) -> Any:
        """The discovery cache (the event loop's, unless one was given)."""
        if self._discovery is None:
            from microframe.discovery.cache import get_discovery_cache

            return get_discovery_cache()
        return self._discovery

    def channel(self, address: str) -> Any:
        """The channel to ``address`` (the event loop's shared one)."""
        return get_channel_pool().get(address, *self._channel_args)

    async def _probe(self, address: str) -> bool:
        return await get_channel_pool().reachable(address, self.options.connect_timeout)

    def _release(self, address: str) -> None:
        """No instance of the service is listed at ``address`` any more: its channel goes."""
        get_channel_pool().release(self.service, address)

    def middleware_keywords(self, method: str, kind: RpcKind) -> dict[str, Any]:
        """What each middleware factory of ``method`` is given, besides the next handler:
        ``service``, ``method``, ``kind``, ``options`` (the :class:`ClientOptions`),
        ``discovery`` (``async instances(service)``), ``membership`` (what the client follows
        of discovery: its subset), ``balancer``, ``ejections``, ``budget`` (the retry budget),
        and ``client`` (this client, for middleware written against it)."""
        return {
            "client": self,
            "service": self.service,
            "method": method,
            "kind": kind,
            "options": self.options,
            "discovery": self._discovery if self._discovery is not None else LoopDiscovery(),
            "membership": self.membership,
            "balancer": self.balancer,
            "ejections": self.ejections,
            "budget": self.retry_budget,
        }

    def chain(self, method: str, kind: RpcKind) -> ClientHandler:
        """The handler of ``method``, built once (middleware outermost first)."""
        return self._chain(method, kind)[0]

    def _chain(self, method: str, kind: RpcKind) -> tuple[ClientHandler, str]:
        key = (method, kind)
        built = self._chains.get(key)
        if built is None:
            path = self._path(method)
            if path != method:
                built = self._chains.get((path, kind))
            if built is None:
                built = (self._build(path, kind), path)
                self._chains[(path, kind)] = built
            self._chains[key] = built
        return built

    def _build(self, method: str, kind: RpcKind) -> ClientHandler:
        handler = connection_handler(
            method, kind, service=self.service, options=self.options,
            balancer=self.balancer, ejections=self.ejections, channel=self.channel,
        )
        keywords = self.middleware_keywords(method, kind)
        for entry in reversed(self._middleware):
            factory = import_string(entry) if isinstance(entry, str) else entry
            try:
                handler = factory(handler, **_keywords_for(factory, keywords))
            except MiddlewareNotUsed:
                continue
        return handler

    # -- calls ---------------------------------------------------------------------------------

    @staticmethod
    def _path(method: str) -> str:
        path = method if method.startswith("/") else f"/{method}"
        if path.count("/") != 2:
            raise ValueError(f"method {method!r} is not /package.Service/Method")
        return path

    def _call(
        self,
        method: str,
        kind: RpcKind,
        request: Any,
        response_class: Any,
        timeout: float | None,
        metadata: Any,
    ) -> tuple[ClientHandler, ClientCall]:
        built = self._chains.get((method, kind)) or self._chain(method, kind)
        call = ClientCall(
            self.service, built[1], kind, request, response_class, timeout, list(metadata or ())
        )
        return built[0], call

    async def unary(
        self,
        method: str,
        request: Any,
        response_class: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Any:
        """Call a unary method; return its response."""
        handler, call = self._call(
            method, RpcKind.UNARY_UNARY, request, response_class, timeout, metadata
        )
        return await handler(call)

    async def unary_stream(
        self,
        method: str,
        request: Any,
        response_class: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> AsyncIterator[Any]:
        """Call a server-streaming method; yield its responses."""
        handler, call = self._call(
            method, RpcKind.UNARY_STREAM, request, response_class, timeout, metadata
        )
        async for message in await handler(call):
            yield message

    async def stream_unary(
        self,
        method: str,
        requests: Any,
        response_class: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> Any:
        """Call a client-streaming method with ``requests`` (an iterable or async iterable)."""
        handler, call = self._call(
            method, RpcKind.STREAM_UNARY, requests, response_class, timeout, metadata
        )
        return await handler(call)

    async def stream_stream(
        self,
        method: str,
        requests: Any,
        response_class: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
    ) -> AsyncIterator[Any]:
        """Call a bidirectional method; yield its responses."""
        handler, call = self._call(
            method, RpcKind.STREAM_STREAM, requests, response_class, timeout, metadata
        )
        async for message in await handler(call):
            yield message


class ServiceClient:
    """Base of the typed clients ``genproto`` generates (``GreeterClient("hello").SayHello(req)``).

    A subclass sets ``grpc_service`` (``"helloworld.Greeter"``) and defines one method per RPC
    calling :meth:`_unary` and friends. ``service`` is the registered name of the service
    (``SERVICE_NAME`` of the callee); options are the :class:`Client`'s.
    """

    grpc_service: str = ""

    def __init__(self, service: str, **options: Any) -> None:
        self.client = Client(service, **options)

    def _path(self, name: str) -> str:
        return f"/{self.grpc_service}/{name}"
