"""The client middleware chain: ``Middleware(next, client=..., method=...) -> handler``.

A handler takes the :class:`~microframe.client.call.ClientCall` and returns the response (or,
for a server-streaming method, an async iterator of responses). ``CLIENT_MIDDLEWARE`` lists the
chain, outermost first, in the seed's order; the innermost step, the call on the wire over the
chosen instance's channel, is :func:`connection_handler`. Built once per client and method.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from microframe.client.call import ClientCall
from microframe.core.context import current_context
from microframe.core.exceptions import (
    HANDLED_TRAILER,
    DeadlineExceeded,
    RpcError,
    Unavailable,
    error_for,
)
from microframe.core.router import RpcKind
from microframe.discovery.registry import RegistryError
from microframe.utils.timeouts import with_timeout

ClientHandler = Callable[[ClientCall], Awaitable[Any]]

#: Trailing metadata microframe servers add to an error answered by application code, so that
#: a client can tell "the handler ran and said UNAVAILABLE" from "the call never reached one".
HANDLED_MARK = HANDLED_TRAILER[0]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class PrepareMiddleware:
    """Set the call's deadline and metadata.

    The deadline is the call's ``timeout`` (else the client's ``TIMEOUT``), and never later than
    the deadline of the request being served when the call is made from a controller: a
    downstream call never outlives its caller's caller. The trace id of that request travels
    as ``x-request-id``.
    """

    def __init__(self, next: ClientHandler, **kwargs: Any) -> None:
        self.next = next

    async def __call__(self, call: ClientCall) -> Any:
        now = time.monotonic()
        timeout = call.timeout if call.timeout is not None else call.client.options.timeout
        deadline = now + timeout
        ctx = current_context()
        if ctx is not None:
            upstream = ctx.time_remaining()
            if upstream is not None:
                if upstream <= 0:
                    raise DeadlineExceeded(f"the request being served has no time left to call {call.service}")
                deadline = min(deadline, now + upstream)
            call.metadata.append(("x-request-id", ctx.trace_id))
        call.deadline = deadline
        call.metadata.extend(call.client.options.metadata)
        return await self.next(call)


class MetricsMiddleware:
    """``grpc_client_*`` metrics (go-grpc-prometheus names), per service and method."""

    def __init__(self, next: ClientHandler, *, client: Any, method: str, kind: Any, **kwargs: Any) -> None:
        from microframe.conf import settings
        from microframe.contrib.metrics.metrics import client_metrics
        from microframe.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed

        try:
            enabled = settings.METRICS.get("ENABLED", True)
        except ImproperlyConfigured:
            enabled = True
        if not enabled:
            raise MiddlewareNotUsed
        self.next = next
        service, _, name = method.lstrip("/").rpartition("/")
        metrics = client_metrics()
        self._labels = (kind.grpc_type, service, name)
        self._started = metrics.started.labels(*self._labels)
        self._handled = metrics.handled
        self._seconds = metrics.handling_seconds.labels(*self._labels)
        self._sent = metrics.msg_sent.labels(*self._labels)
        self._received = metrics.msg_received.labels(*self._labels)
        self._streaming = kind.server_streaming
        self._by_code: dict[grpc.StatusCode, Any] = {}

    async def __call__(self, call: ClientCall) -> Any:
        self._started.inc()
        if not call.kind.client_streaming:
            self._sent.inc()
        start = time.perf_counter()
        try:
            response = await self.next(call)
        except RpcError as err:
            self._finish(err.code, start)
            raise
        except BaseException:
            self._finish(grpc.StatusCode.UNKNOWN, start)
            raise
        if self._streaming:
            return self._count(response, start)
        self._received.inc()
        self._finish(grpc.StatusCode.OK, start)
        return response

    def _finish(self, code: grpc.StatusCode, start: float) -> None:
        self._seconds.observe(time.perf_counter() - start)
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self._labels, code.name)
        child.inc()

    async def _count(self, stream: AsyncIterator[Any], start: float) -> AsyncIterator[Any]:
        code = grpc.StatusCode.OK
        try:
            async for message in stream:
                self._received.inc()
                yield message
        except RpcError as err:
            code = err.code
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._finish(code, start)


class AccessLogMiddleware:
    """One line per call on the ``microframe.client.access`` logger: the method, the status
    code, the duration, the instance that answered and the instances tried.

    Written at INFO; the default logging configuration keeps this logger at WARNING (a line
    per outgoing call is a lot): set its level to INFO in ``LOGGING`` to see them. When it is
    not enabled for INFO, the step costs one level check per call.
    """

    def __init__(self, next: ClientHandler, *, client: Any, method: str, **kwargs: Any) -> None:
        import logging

        self.next = next
        self.logger = logging.getLogger("microframe.client.access")
        self.target = f"{client.service}{method}"

    async def __call__(self, call: ClientCall) -> Any:
        logger = self.logger
        if not logger.isEnabledFor(20):
            return await self.next(call)
        start = time.perf_counter()
        code = "OK"
        try:
            return await self.next(call)
        except RpcError as err:
            code = err.code.name
            raise
        except BaseException as err:
            code = type(err).__name__
            raise
        finally:
            answered = call.instance.address if call.instance is not None else "-"
            logger.info(
                "%s %s %.1fms instance=%s tried=%s attempts=%d",
                self.target, code, (time.perf_counter() - start) * 1000, answered,
                ",".join(call.tried) or "-", call.attempt,
            )


class DiscoveryMiddleware:
    """Find the instances of the service in the discovery cache (watch-fed, kept on disk)."""

    def __init__(self, next: ClientHandler, **kwargs: Any) -> None:
        self.next = next

    async def __call__(self, call: ClientCall) -> Any:
        client = call.client
        try:
            instances = await client.discovery().instances(call.service)
        except RegistryError as err:
            raise Unavailable(f"no instance of {call.service!r} is known: {err}") from None
        if not instances:
            raise Unavailable(f"no instance of {call.service!r} is registered")
        call.instances = instances
        return await self.next(call)


class BalancerMiddleware:
    """Choose the instance of each attempt with the client's balancer (``BALANCER``).

    A retry (see :class:`RetryMiddleware`) chooses again with ``call.repick()``.
    """

    def __init__(self, next: ClientHandler, **kwargs: Any) -> None:
        self.next = next

    async def __call__(self, call: ClientCall) -> Any:
        call.repick()
        return await self.next(call)


class Ejections:
    """Instances a client keeps away from for a while after they refused a connection.

    An instance that answers UNAVAILABLE without reaching a handler (refused connection, reset,
    shutting down) is not chosen for ``base`` seconds, doubling with each new failure up to
    ``maximum``, unless every instance is ejected; one success, or discovery listing it anew,
    brings it back. This is what keeps a dead instance from taking a share of the calls until
    discovery drops it (grpc's own balancers skip subchannels in TRANSIENT_FAILURE the same way).
    """

    def __init__(self, base: float = 1.0, maximum: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def eject(self, instance_id: str) -> None:
        strikes = self._strikes.get(instance_id, 0) + 1
        self._strikes[instance_id] = strikes
        self._until[instance_id] = self._clock() + min(self.maximum, self.base * 2 ** (strikes - 1))

    def clear(self, instance_id: str) -> None:
        self._until.pop(instance_id, None)
        self._strikes.pop(instance_id, None)

    def current(self) -> set[str]:
        now = self._clock()
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]
        return set(self._until)


class RetryBudget:
    """Retries allowed as a share of recent calls: ``ratio`` of the calls of the last ``window``
    seconds, plus ``min_per_second`` per second (Finagle's retry budget). In an outage where
    every call fails, retries add at most that share of load."""

    def __init__(self, ratio: float, min_per_second: float, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._clock = clock
        self._calls: collections.deque[float] = collections.deque()
        self._retries: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        limit = now - self.window
        for times in (self._calls, self._retries):
            while times and times[0] < limit:
                times.popleft()

    def record_call(self) -> None:
        self._calls.append(self._clock())

    def try_retry(self) -> bool:
        now = self._clock()
        self._trim(now)
        allowed = self.ratio * len(self._calls) + self.min_per_second * self.window
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True


#: How grpc words the end of a call whose connection was lost after the call was sent (the
#: server went away mid-call): the handler may have run, or be running still.
LOST_IN_FLIGHT = ("Stream removed", "Socket closed", "Connection reset", "Broken pipe", "Transport closed")
#: ... except a stream the server refused before reading it (RST_STREAM REFUSED_STREAM), and
#: a connection that failed before the call was sent on it (grpc's "failed to connect to all
#: addresses; last error: ...: Socket closed", microframe's "cannot connect to ...").
NEVER_SENT = ("error code 7", "failed to connect", "cannot connect to")


def reached_a_handler(err: RpcError) -> bool:
    """Whether the server's handler answered ``err`` (it carries the handled mark)."""
    return any(key == HANDLED_MARK for key, _ in err.trailers)


def lost_in_flight(err: RpcError) -> bool:
    """Whether ``err`` says the connection was lost while the call was on it (see
    :data:`LOST_IN_FLIGHT`): it may have been executed."""
    message = err.message
    return any(words in message for words in LOST_IN_FLIGHT) and not any(words in message for words in NEVER_SENT)


def is_retryable(err: RpcError, codes: frozenset[grpc.StatusCode]) -> bool:
    """Whether a call that failed with ``err`` may be sent again, to another instance.

    The retry rules (RetryMiddleware applies them; docs/topics/client.md lists them):

    1. A code the client's ``RETRY["CODES"]`` lists is retried: the user declared the method
       safe to run again for it (idempotent).
    2. UNAVAILABLE is retried when the call cannot have run: it never left (no instance, the
       connection refused or not made within ``CONNECT_TIMEOUT``, the stream refused), or the
       server answered it from outside any handler (a stop before the call got in, a server
       at its limits...). Those answers have no handled mark.
    3. UNAVAILABLE with the handled mark is not retried: a handler ran. Calls cut at the end
       of a stop's ``GRACE`` carry it, so a stop never runs a call twice.
    4. UNAVAILABLE because the connection was lost while the call was on it (the server
       crashed or was killed mid-call: "Stream removed", "Socket closed"...) is not retried:
       the call may have run.
    5. Nothing else is retried.
    """
    if err.code in codes:
        return True
    return err.code is _UNAVAILABLE and not reached_a_handler(err) and not lost_in_flight(err)


class RetryMiddleware:
    """Try again, on another instance, where it is safe (:func:`is_retryable`); within a
    budget; never past the deadline.

    Only calls whose request is one message are retried (a request stream cannot be replayed),
    and a server stream only before its first message.
    """

    def __init__(self, next: ClientHandler, *, client: Any, method: str, kind: Any, **kwargs: Any) -> None:
        from microframe.core.exceptions import MiddlewareNotUsed

        options = client.options.retry
        if options.max_attempts <= 1 or kind.client_streaming:
            raise MiddlewareNotUsed
        self.next = next
        self.options = options
        self.budget = client.retry_budget
        from microframe.client.breaker import retry_counter

        self._retries = retry_counter().labels(client.service, method)
        self._refused = retry_counter(refused=True).labels(client.service, method)

    async def __call__(self, call: ClientCall) -> Any:
        options = self.options
        self.budget.record_call()
        while True:
            try:
                return await self.next(call)
            except RpcError as err:
                if call.attempt >= options.max_attempts or not is_retryable(err, options.codes):
                    raise
                pause = random.uniform(0, min(options.backoff_max, options.backoff * 2 ** (call.attempt - 1)))
                if call.remaining() <= pause:
                    raise
                if not self.budget.try_retry():
                    self._refused.inc()
                    raise
                self._retries.inc()
                if pause:
                    await asyncio.sleep(pause)
                call.attempt += 1
                call.repick()


def _from_aio(err: grpc.aio.AioRpcError) -> RpcError:
    trailers = tuple((str(k), str(v)) for k, v in (err.trailing_metadata() or ()))
    return error_for(err.code(), err.details() or err.code().name.lower(), trailers)


def connection_handler(client: Any, method: str, kind: RpcKind) -> ClientHandler:
    """The innermost handler: the call itself, on the chosen instance's channel."""
    serializer = _serialize
    balancer = client.balancer

    factory_name = str(kind)  # RpcKind's values are grpc's names of its multicallables
    # Per address: [the channel, its multicallable, whether it answered the last call], built on
    # first use (building a multicallable per call costs more than the rest of the chain). A
    # channel the pool closed and replaced is noticed, and its entry made anew.
    entries: dict[str, list[Any]] = {}

    def entry_for(call: ClientCall) -> list[Any]:
        assert call.instance is not None
        address = call.instance.address
        channel = client.channel(address)
        entry = entries.get(address)
        if entry is None or entry[0] is not channel:
            multicallable = getattr(channel, factory_name)(
                method, request_serializer=serializer, response_deserializer=call.response_class.FromString
            )
            entry = entries[address] = [channel, multicallable, False]
        return entry

    connect_timeout = client.options.connect_timeout
    ready = grpc.ChannelConnectivity.READY
    failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def connect(call: ClientCall, channel: Any) -> None:
        """Make sure the instance's connection is up (called unless the channel answered the
        last call: asking grpc costs more than the rest of the chain): while it is being set
        up, wait up to ``CONNECT_TIMEOUT``; when the last attempt failed (refused, reset), give
        up at once. Either way an unreachable instance costs little, and the call is retried on
        another, instead of spending its whole deadline on one connection."""
        assert call.instance is not None
        state = channel.get_state(try_to_connect=True)
        if state is ready:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + min(connect_timeout, call.remaining())
        while state is not ready:
            if state is failed:
                raise Unavailable(f"cannot connect to {call.service} at {call.instance.address}")
            left = until - loop.time()
            if left <= 0:
                raise Unavailable(
                    f"cannot connect to {call.service} at {call.instance.address} within "
                    f"{connect_timeout:g} s"
                )
            try:
                await with_timeout(channel.wait_for_state_change(state), left)
            except TimeoutError:
                continue
            state = channel.get_state(try_to_connect=True)

    def timeout_of(call: ClientCall) -> float | None:
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling {call.service}{method}")
        return None if remaining == float("inf") else remaining

    if not kind.server_streaming:

        async def unary_response(call: ClientCall) -> Any:
            instance = call.instance
            if instance is None:
                raise Unavailable(f"no instance of {call.service!r} to call")
            call.tried.append(instance.id)
            entry = entry_for(call)
            token = balancer.start(instance)
            ok = False
            try:
                if not entry[2]:
                    await connect(call, entry[0])
                response = await entry[1](call.request, timeout=timeout_of(call), metadata=call.metadata)
                ok = entry[2] = True
                return response
            except Unavailable:
                entry[2] = False
                client.ejections.eject(instance.id)
                raise
            except grpc.aio.AioRpcError as err:
                ok = err.code() not in _UNHEALTHY
                error = _from_aio(err)
                if error.code is _UNAVAILABLE and not reached_a_handler(error):  # the instance is gone or refusing
                    entry[2] = False
                    client.ejections.eject(instance.id)
                raise error from None
            finally:
                balancer.done(instance, token, ok)
                if ok and client.ejections:
                    client.ejections.clear(instance.id)

        return unary_response

    async def stream_response(call: ClientCall) -> AsyncIterator[Any]:
        instance = call.instance
        if instance is None:
            raise Unavailable(f"no instance of {call.service!r} to call")
        call.tried.append(instance.id)
        multicallable, timeout = entry_for(call)[1], timeout_of(call)
        token = balancer.start(instance)
        responses = multicallable(call.request, timeout=timeout, metadata=call.metadata)

        async def messages() -> AsyncIterator[Any]:
            ok = False
            try:
                async for message in responses:
                    yield message
                ok = True
            except grpc.aio.AioRpcError as err:
                ok = err.code() not in _UNHEALTHY
                raise _from_aio(err) from None
            finally:
                balancer.done(instance, token, ok)
                responses.cancel()

        return messages()

    return stream_response


#: Codes that say the instance is unhealthy (they count against it in the balancer).
_UNHEALTHY = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
})


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]
