"""``RateLimitMiddleware`` (server) and ``ClientRateLimitMiddleware`` (the client chain's limit
step).

Server side, ``LIMITER`` decides (see :mod:`microframe.contrib.limiter.settings`)::

    LIMITER = {
        "BACKEND": "microframe.contrib.limiter.backends.TokenBucket",
        "OPTIONS": {"rate": 100, "burst": 200},
        "MODE": "reject",                 # or "wait": queue up to MAX_WAIT seconds
        "KEY": "service",                 # or "method", "peer", "metadata:x-tenant-id"
        "METHODS": {"/shop.Orders/Create": {"OPTIONS": {"rate": 10, "burst": 10}},
                    "/shop.Orders/Get": None},     # exempt
    }

A call over the limit is answered RESOURCE_EXHAUSTED, with a ``google.rpc.RetryInfo`` detail
and a ``retry-after`` trailing metadata saying in how many seconds (a decimal) a permit will be
there. In ``wait`` mode a call waits for
its turn, up to ``MAX_WAIT`` seconds and never past its own deadline (the seed's queueing for
flash sales), and is refused only when its turn would come later than that.

Client side, ``limit_qps`` (``CLIENTS[service]["LIMIT_QPS"]``) caps the calls a process makes to
a service, the seed's ``WithLimitQPS``: calls over it fail at once with RESOURCE_EXHAUSTED
without touching the network (or wait ``LIMIT_WAIT`` seconds for their turn).
"""

from __future__ import annotations

import collections
import inspect
import math
import threading
from collections.abc import Callable
from typing import Any

from microframe.contrib.limiter.metrics import limiter_metrics
from microframe.contrib.limiter.settings import LimitConfig, method_config
from microframe.core.context import RequestContext
from microframe.core.error_details import retry_info
from microframe.core.exceptions import MiddlewareNotUsed, ResourceExhausted, RpcError
from microframe.core.middleware import Handler
from microframe.core.router import Route

RETRY_AFTER = "retry-after"
#: Seconds a waiting call keeps for being served and its answer reaching the caller (the
#: server's view of a deadline is late by the request's way in): one whose turn comes later is
#: refused. 10 ms was measured too short on a loaded 2-core machine (a call served at 0.99 s of
#: a 1 s deadline, answered after it).
DEADLINE_MARGIN = 0.05
#: Distinct peers or metadata values a limiter keeps a bucket for (the least recent are dropped).
MAX_KEYS = 10000

_limiters_lock = threading.Lock()
_limiters: dict[tuple[Any, ...], Any] = {}


def _build(config: LimitConfig, scope: str) -> Any:
    """A new backend for ``config``, counting under ``scope`` (for backends that share state)."""
    from microframe.conf import settings

    factory = config.factory()
    options = dict(config.options)
    try:
        accepts_key = "key" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_key = False
    if accepts_key and "key" not in options:
        options["key"] = f"{settings.SERVICE_NAME}:{scope}"
    return factory(**options)


def _shared(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """The process's one limiter under ``key``, made by ``make()`` on first use."""
    limiter = _limiters.get(key)
    if limiter is None:
        with _limiters_lock:
            limiter = _limiters.get(key)
            if limiter is None:
                limiter = _limiters[key] = make()
    return limiter


def shared_limiter(config: LimitConfig, scope: str) -> Any:
    """The process's one backend for ``config`` and ``scope`` (built on first use)."""
    key = (config.backend, tuple(sorted((k, repr(v)) for k, v in config.options.items())), scope)
    return _shared(key, lambda: _build(config, scope))


class _PerKey:
    """Backends by key (a peer, a metadata value), the least recently used dropped past
    ``MAX_KEYS``."""

    def __init__(self, config: LimitConfig, scope: str) -> None:
        self.config = config
        self.scope = scope
        self._limiters: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            limiter = self._limiters.get(key)
            if limiter is not None:
                self._limiters.move_to_end(key)
                return limiter
            limiter = self._limiters[key] = _build(self.config, f"{self.scope}:{key}")
            if len(self._limiters) > MAX_KEYS:
                self._limiters.popitem(last=False)
            return limiter


def _key_function(key: str) -> Callable[[RequestContext], str]:
    if key == "peer":
        def peer(ctx: RequestContext) -> str:
            address = ctx.peer  # "ipv4:10.0.0.5:53412": the host, not the connection's port
            return address.rpartition(":")[0] or address
        return peer
    name = key.split(":", 1)[1].lower()

    def metadata(ctx: RequestContext) -> str:
        return ctx.metadata.get(name) or "-"
    return metadata


def retry_after(wait: float) -> str:
    """The ``retry-after`` of a wait of ``wait`` seconds: milliseconds, rounded up, never
    "0.000" (a permit less than half a millisecond away would round to "retry now")."""
    return f"{max(math.ceil(wait * 1000), 1) / 1000:.3f}"


def _rejection(what: str, wait: float | None) -> RpcError:
    """RESOURCE_EXHAUSTED, with when a permit will be there: a ``google.rpc.RetryInfo``
    detail (which microframe's client and the gateway's ``Retry-After`` honour) and the
    ``retry-after`` trailer (for clients that read no details)."""
    if wait is None or wait == float("inf"):
        return ResourceExhausted(f"rate limit of {what} exceeded")
    after = retry_after(wait)
    return ResourceExhausted(
        f"rate limit of {what} exceeded",
        trailers=((RETRY_AFTER, after),),
        details=(retry_info(float(after)),),
    )


class RateLimitMiddleware:
    """Limit the calls of the method this chain serves, as ``LIMITER`` says."""

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        config = method_config(route.full_method if route is not None else None)
        if config is None:
            raise MiddlewareNotUsed
        self.next = next
        self.config = config
        self.what = route.full_method if route is not None else "the service"
        service, method = (route.service, route.method) if route is not None else ("-", "-")
        metrics = limiter_metrics()
        self._allowed = metrics.allowed.labels(service, method)
        self._rejected = metrics.rejected.labels(service, method)
        self._waited = metrics.wait_seconds.labels(service, method)
        if config.key == "service" and not config.own:
            scope = "service"
        else:
            scope = route.full_method if route else "-"
        self._limiter: Any = None
        self._per_key: _PerKey | None = None
        self._key_of: Callable[[RequestContext], str] | None = None
        if config.key in ("service", "method"):
            self._limiter = shared_limiter(config, scope)
            self._is_async = bool(self._limiter.is_async)
        else:
            self._per_key = _PerKey(config, scope)
            self._key_of = _key_function(config.key)
            self._is_async = bool(self._per_key.get("-").is_async)
        self._wait_mode = config.mode == "wait"
        self._max_wait = config.max_wait
        self._fast = self._limiter is not None and not self._is_async and not self._wait_mode
        self._try_acquire: Any = self._limiter.try_acquire if self._fast else None

    def limiter_for(self, ctx: RequestContext) -> Any:
        if self._limiter is not None:
            return self._limiter
        assert self._per_key is not None and self._key_of is not None
        return self._per_key.get(self._key_of(ctx))

    def __call__(self, ctx: RequestContext, request: Any) -> Any:
        # The common case (a local limiter, reject mode, one limit for the method) decides here
        # and hands back the next handler's coroutine: no coroutine frame of its own per call.
        if self._fast:
            wait = self._try_acquire(1)
            if wait:
                self._rejected.inc()
                raise _rejection(self.what, wait)
            self._allowed.inc()
            return self.next(ctx, request)
        return self._call(ctx, request)

    async def _call(self, ctx: RequestContext, request: Any) -> Any:
        limiter = self._limiter if self._limiter is not None else self.limiter_for(ctx)
        if self._wait_mode:
            budget = self._max_wait
            remaining = ctx.time_remaining()
            if remaining is not None and remaining - DEADLINE_MARGIN < budget:
                budget = max(0.0, remaining - DEADLINE_MARGIN)
            waited = await limiter.acquire(1, budget)
            if waited < 0:
                self._rejected.inc()
                raise _rejection(self.what, -waited)
            self._waited.observe(waited)
        else:
            wait = await limiter.try_acquire(1) if self._is_async else limiter.try_acquire(1)
            if wait:
                self._rejected.inc()
                raise _rejection(self.what, wait)
        self._allowed.inc()
        return await self.next(ctx, request)


class ClientRateLimitMiddleware:
    """The client chain's limit step: at most ``LIMIT_QPS`` calls per second from this process
    to the service (a token bucket of ``LIMIT_BURST``, shared by every client of the service
    with the same limit); over it, RESOURCE_EXHAUSTED at once, or a wait of up to
    ``LIMIT_WAIT`` seconds (never past the call's deadline)."""

    def __init__(
        self, next: Any, *, service: str, options: Any, method: str, **kwargs: Any
    ) -> None:
        if not options.limit_qps:
            raise MiddlewareNotUsed
        from microframe.contrib.limiter.backends import TokenBucket

        self.next = next
        self.what = f"{options.limit_qps:g} calls per second to {service}"
        self.limiter = _shared(
            ("client", service, options.limit_qps, options.limit_burst),
            lambda: TokenBucket(options.limit_qps, options.limit_burst),
        )
        self.max_wait = options.limit_wait
        service, _, name = method.lstrip("/").rpartition("/")
        metrics = limiter_metrics()
        self._rejected = metrics.rejected.labels(service, name)

    async def __call__(self, call: Any) -> Any:
        if self.max_wait > 0:
            waited = await self.limiter.acquire(1, min(self.max_wait, call.remaining()))
            if waited < 0:
                self._rejected.inc()
                raise _rejection(self.what, -waited)
        else:
            wait = self.limiter.try_acquire(1)
            if wait:
                self._rejected.inc()
                raise _rejection(self.what, wait)
        return await self.next(call)
