"""``Client``: call the methods of a service by its registered name.

::

    from microframe.client import Client

    client = Client("hello", timeout=0.5)
    reply = await client.unary("/helloworld.Greeter/SayHello", HelloRequest(name="Ada"), HelloReply)

Every call goes through the client middleware chain (``CLIENT_MIDDLEWARE``): the deadline and
metadata are prepared, metrics recorded, the instances found through discovery, one chosen by
the balancer, the call retried on another instance where it is safe, and made over a channel
shared by every client of the event loop. Errors are raised as microframe's
:class:`~microframe.core.exceptions.RpcError` subclasses (``Unavailable``, ``NotFound``...), with
the status code, message and trailing metadata of the answer; a controller that lets one through
answers its own caller with the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from microframe.client.balancers import Balancer, make_balancer
from microframe.client.call import ClientCall
from microframe.client.middleware import ClientHandler, Ejections, RetryBudget, connection_handler
from microframe.client.options import ClientOptions
from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from microframe.core.router import RpcKind
from microframe.utils.module_loading import import_string

#: The chain when the settings are not configured: the default of ``CLIENT_MIDDLEWARE``.
DEFAULT_CLIENT_MIDDLEWARE = global_settings.CLIENT_MIDDLEWARE


def _middleware_setting() -> list[Any]:
    from microframe.conf import settings

    try:
        return list(getattr(settings, "CLIENT_MIDDLEWARE", DEFAULT_CLIENT_MIDDLEWARE))
    except ImproperlyConfigured:
        return list(DEFAULT_CLIENT_MIDDLEWARE)


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
        self.options = ClientOptions.resolve(service, **options)
        self.balancer: Balancer = make_balancer(self.options.balancer)
        self.retry_budget = RetryBudget(self.options.retry.budget_ratio, self.options.retry.budget_min_per_second)
        self.ejections = Ejections()
        self._middleware = middleware if middleware is not None else _middleware_setting()
        self._discovery = discovery
        self._chains: dict[tuple[str, RpcKind], ClientHandler] = {}
        self._watching = False

    # -- what the chain uses -------------------------------------------------------------------

    def discovery(self) -> Any:
        """The discovery cache (the event loop's, unless one was given)."""
        if self._discovery is None:
            from microframe.discovery.cache import get_discovery_cache

            return get_discovery_cache()
        return self._discovery

    def channel(self, address: str) -> Any:
        from microframe.client.channels import get_channel_pool

        pool = get_channel_pool()
        if not self._watching:
            self._watching = True
            cache = self.discovery()

            def changed(service: str, instances: list[Any]) -> None:
                pool.retain(service, {i.address for i in instances})
                for instance in instances:
                    self.ejections.clear(instance.id)
                forget = getattr(self.balancer, "forget", None)
                if forget is not None:
                    forget({i.id for i in instances})

            cache.subscribe(self.service, changed)
        return pool.get(address, self.options.channel_options, self.options.tls, self.service)

    def chain(self, method: str, kind: RpcKind) -> ClientHandler:
        """The handler of ``method``, built once (middleware outermost first)."""
        key = (method, kind)
        handler = self._chains.get(key)
        if handler is None:
            handler = connection_handler(self, method, kind)
            for entry in reversed(self._middleware):
                factory = import_string(entry) if isinstance(entry, str) else entry
                try:
                    handler = factory(handler, client=self, method=method, kind=kind)
                except MiddlewareNotUsed:
                    continue
            self._chains[key] = handler
        return handler

    # -- calls ---------------------------------------------------------------------------------

    @staticmethod
    def _path(method: str) -> str:
        path = method if method.startswith("/") else f"/{method}"
        if path.count("/") != 2:
            raise ValueError(f"method {method!r} is not /package.Service/Method")
        return path

    def _call(self, method: str, kind: RpcKind, request: Any, response_class: Any, timeout: float | None, metadata: Any) -> tuple[ClientHandler, ClientCall]:
        path = self._path(method)
        call = ClientCall(self, path, kind, request, response_class, timeout, list(metadata or ()))
        return self.chain(path, kind), call

    async def unary(self, method: str, request: Any, response_class: Any, *, timeout: float | None = None, metadata: Any = None) -> Any:
        """Call a unary method; return its response."""
        handler, call = self._call(method, RpcKind.UNARY_UNARY, request, response_class, timeout, metadata)
        return await handler(call)

    async def unary_stream(self, method: str, request: Any, response_class: Any, *, timeout: float | None = None, metadata: Any = None) -> AsyncIterator[Any]:
        """Call a server-streaming method; yield its responses."""
        handler, call = self._call(method, RpcKind.UNARY_STREAM, request, response_class, timeout, metadata)
        async for message in await handler(call):
            yield message

    async def stream_unary(self, method: str, requests: Any, response_class: Any, *, timeout: float | None = None, metadata: Any = None) -> Any:
        """Call a client-streaming method with ``requests`` (an iterable or async iterable)."""
        handler, call = self._call(method, RpcKind.STREAM_UNARY, requests, response_class, timeout, metadata)
        return await handler(call)

    async def stream_stream(self, method: str, requests: Any, response_class: Any, *, timeout: float | None = None, metadata: Any = None) -> AsyncIterator[Any]:
        """Call a bidirectional method; yield its responses."""
        handler, call = self._call(method, RpcKind.STREAM_STREAM, requests, response_class, timeout, metadata)
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
