"""The client middleware chain: ``Middleware(next, *, service, method, kind, options, ...)``.

A handler takes the :class:`~microframe.client.call.ClientCall` and returns the response (or,
for a server-streaming method, an async iterator of responses). ``CLIENT_MIDDLEWARE`` lists the
chain, outermost first; the innermost step, the call on the wire over the chosen instance's
channel, is :func:`microframe.client.transport.connection_handler`. Built once per client and
method: each step is given what it needs of its client then, as keyword arguments (see
:meth:`microframe.client.Client.chain`), and keeps what it can work out once.

The retry rules (:func:`is_retryable`) live here, next to :class:`RetryMiddleware` that applies
them.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

import grpc

from microframe.client.call import ClientCall, ClientHandler
from microframe.client.membership import SubsetList
from microframe.client.outliers import InstanceUnreachable
from microframe.conf import global_settings
from microframe.core.context import current_context
from microframe.core.error_details import retry_delay
from microframe.core.exceptions import (
    HANDLED_TRAILER,
    DeadlineExceeded,
    ImproperlyConfigured,
    MiddlewareNotUsed,
    RpcError,
    Unavailable,
)
from microframe.core.propagation import log_token, steering, stress_color, stress_key
from microframe.discovery.registry import RegistryError

if TYPE_CHECKING:
    from microframe.client.balancers import Balancer
    from microframe.client.membership import Membership
    from microframe.client.options import ClientOptions
    from microframe.client.outliers import Ejections, RetryBudget
    from microframe.core.router import RpcKind

__all__ = [
    "AccessLogMiddleware",
    "BalancerMiddleware",
    "ClientHandler",
    "DiscoveryMiddleware",
    "HANDLED_MARK",
    "PrepareMiddleware",
    "RetryMiddleware",
    "is_retryable",
    "lost_in_flight",
    "reached_a_handler",
]

#: Trailing metadata microframe servers add to an error answered by application code, so that
#: a client can tell "the handler ran and said UNAVAILABLE" from "the call never reached one".
HANDLED_MARK = HANDLED_TRAILER[0]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _stress_key() -> str:
    """``PROPAGATION["STRESS_KEY"]``, or its default for a script without settings."""
    try:
        return stress_key()
    except ImproperlyConfigured:
        return str(global_settings.PROPAGATION["STRESS_KEY"])


class PrepareMiddleware:
    """Set the call's deadline and metadata.

    The deadline is the call's ``timeout`` (else the method's ``METHOD_TIMEOUTS`` entry, else
    the client's ``TIMEOUT``: worked out once, when the chain of the method is built), and
    never later than the deadline of the request being served when the call is made from a
    controller: a downstream call never outlives its caller's caller. The trace id of that
    request travels as ``x-request-id``, with its ``x-md-global-*`` metadata and what the
    controller put in ``ctx.metadata_out`` (:mod:`microframe.core.propagation`); the client's
    ``METADATA`` follows.
    """

    def __init__(
        self, next: ClientHandler, *, service: str, options: ClientOptions, method: str = "",
        **kwargs: Any,
    ) -> None:
        self.next = next
        self.timeout: float = options.method_timeout(method)
        self.metadata: tuple[tuple[str, str], ...] = options.metadata
        self._late = f"the request being served has no time left to call {service}"

    async def __call__(self, call: ClientCall) -> Any:
        now = time.monotonic()
        deadline = now + (call.timeout if call.timeout is not None else self.timeout)
        ctx = current_context()
        if ctx is not None:
            upstream = ctx.time_remaining()
            if upstream is not None:
                if upstream <= 0:
                    raise DeadlineExceeded(self._late)
                deadline = min(deadline, now + upstream)
            call.metadata.append(("x-request-id", ctx.trace_id))
            travels = ctx.propagated()
            if travels:
                # What the call was given itself wins over what travels with the request.
                given = {key for key, _ in call.metadata}
                call.metadata.extend(pair for pair in travels if pair[0] not in given)
        call.deadline = deadline
        if self.metadata:
            call.metadata.extend(self.metadata)
        return await self.next(call)


class AccessLogMiddleware:
    """One line per call on the ``microframe.client.access`` logger: the method, the status
    code, the duration, the instance that answered and the instances tried.

    Written at INFO; the default logging configuration keeps this logger at WARNING (a line
    per outgoing call is a lot): set its level to INFO in ``LOGGING`` to see them. When it is
    not enabled for INFO, the step costs one level check per call.
    """

    def __init__(self, next: ClientHandler, *, service: str, method: str, **kwargs: Any) -> None:
        import logging

        self.next = next
        self.logger = logging.getLogger("microframe.client.access")
        self.target = f"{service}{method}"
        self.stress_key = _stress_key()

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
            if call.router is not None:  # routed: as discovery saw it (STRESS_COLOR applied)
                color, stress = call.color, call.stress
            else:  # refused before (a breaker, a limiter)
                color, stress = steering(call.metadata, self.stress_key)
            marks = f" color={log_token(color)}" if color else ""
            if stress:
                marks += " stress=1"
            logger.info(
                "%s %s %.1fms instance=%s tried=%s attempts=%d%s",
                self.target, code, (time.perf_counter() - start) * 1000, answered,
                ",".join(call.tried) or "-", call.attempt, marks,
            )


class DiscoveryMiddleware:
    """Find the instances of the service in the discovery cache (watch-fed, kept on disk):
    the client's subset of them, when they are more than its ``SUBSET_SIZE``, and of those the
    ones of the call's color (:mod:`microframe.client.colors`)."""

    def __init__(
        self,
        next: ClientHandler,
        *,
        service: str,
        discovery: Any,
        membership: Membership | None = None,
        options: ClientOptions | None = None,
        **kwargs: Any,
    ) -> None:
        from microframe.client.colors import ColorRouter

        self.next = next
        self.service = service
        self.discovery = discovery
        self.membership = membership
        self.colors = ColorRouter(service, bool(options is not None and options.color_strict))
        self.stress_key = _stress_key()
        try:
            self.stress_color = stress_color()
        except ImproperlyConfigured:  # a script without settings
            self.stress_color = None

    async def __call__(self, call: ClientCall) -> Any:
        try:
            instances = await self.discovery.instances(self.service)
        except RegistryError as err:
            raise Unavailable(f"no instance of {self.service!r} is known: {err}") from None
        if not instances:
            raise Unavailable(f"no instance of {self.service!r} is registered")
        membership = self.membership
        if membership is not None:
            if not membership.following:
                membership.follow(self.discovery, self.service, instances)
            instances = membership.view(instances)
        color, stress = steering(call.metadata, self.stress_key)
        if stress and color is None:
            color = self.stress_color  # a load test's call: to the shadow instances
        call.color, call.stress = color, stress
        call.instances = self.colors.route(instances, color)
        call.router = self.colors
        return await self.next(call)


#: Instances a call may try when the ones it chose could not be connected to, besides the
#: first: a connection refused costs a millisecond and no server anything, so a client in a
#: fleet of dead entries finds a live instance within the call rather than failing it.
UNREACHABLE_REPICKS = 8


class BalancerMiddleware:
    """Choose the instance of the attempt with the client's balancer (``BALANCER``).

    It sits inside :class:`RetryMiddleware`, so that every attempt picks its own instance:
    never one that failed this call, nor one the client keeps away from (its ejections), while
    another is available. An instance that cannot be connected to
    (:class:`~microframe.client.outliers.InstanceUnreachable`: the call was never sent) is
    ejected and another chosen at once, up to :data:`UNREACHABLE_REPICKS` times within the
    deadline, without counting as an attempt.
    """

    def __init__(
        self,
        next: ClientHandler,
        *,
        balancer: Balancer,
        ejections: Ejections,
        membership: Membership | None = None,
        **kwargs: Any,
    ) -> None:
        self.next = next
        self.pick = balancer.pick
        self.ejections = ejections
        self.membership = membership

    async def __call__(self, call: ClientCall) -> Any:
        ejections = self.ejections
        repicks = 0
        unreachable: InstanceUnreachable | None = None
        while True:
            if call.tried or ejections:
                # The ejections' own set, the same object until it changes (the balancer
                # keeps its view of the instances left for it); a retry adds the ones tried.
                # A subset was made without the ejected: only the ones tried are left out.
                if not ejections or type(call.instances) is SubsetList:
                    avoid = frozenset(call.tried)
                else:
                    avoid = ejections.current()
                    if call.tried:
                        avoid = avoid.union(call.tried)
                chosen = call.instance = self.pick(call.instances, avoid)
                if unreachable is not None and chosen is not None and chosen.id in avoid:
                    raise unreachable  # none left that is neither tried nor ejected
            else:  # the first attempt, nothing kept away from: the common case, kept cheap
                call.instance = self.pick(call.instances)
            try:
                return await self.next(call)
            except InstanceUnreachable as err:
                repicks += 1
                if repicks > UNREACHABLE_REPICKS or call.remaining() <= 0:
                    raise
                unreachable = err
                if self.membership is not None:  # the subset, with the ejected replaced
                    current = self.membership.current(call.instances)
                    if current is not call.instances and call.router is not None:
                        current = call.router.route(current, call.color)
                    call.instances = current


#: How grpc words the end of a call whose connection was lost after the call was sent (the
#: server went away mid-call): the handler may have run, or be running still.
LOST_IN_FLIGHT = (
    "Stream removed", "Socket closed", "Connection reset", "Broken pipe", "Transport closed",
)
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
    return any(words in message for words in LOST_IN_FLIGHT) and not any(
        words in message for words in NEVER_SENT
    )


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
    3b. An error with a ``google.rpc.RetryInfo`` detail is retried after the delay it asks
       for (at least), whatever its code: the server says the call may be sent again (the
       limiter's refusals carry one; they come before the controller runs). That rule is
       :class:`RetryMiddleware`'s, which reads the details.
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
    and a server stream only before its first message. The instance of each attempt is chosen
    by the steps inside this one (:class:`BalancerMiddleware`).
    """

    def __init__(
        self,
        next: ClientHandler,
        *,
        service: str,
        method: str,
        kind: RpcKind,
        options: ClientOptions,
        budget: RetryBudget,
        **kwargs: Any,
    ) -> None:
        retry = options.retry
        if retry.max_attempts <= 1 or kind.client_streaming:
            raise MiddlewareNotUsed
        self.next = next
        self.budget = budget
        self.max_attempts: int = retry.max_attempts
        self.codes: frozenset[grpc.StatusCode] = retry.codes
        self.backoff: float = retry.backoff
        self.backoff_max: float = retry.backoff_max
        from microframe.client.breaker import retry_counter

        self._retries = retry_counter().labels(service, method)
        self._refused = retry_counter(refused=True).labels(service, method)

    async def __call__(self, call: ClientCall) -> Any:
        self.budget.record_call()
        while True:
            try:
                return await self.next(call)
            except RpcError as err:
                # A server's RetryInfo says the call may be sent again, and when.
                asked = retry_delay(err.details) if err.details else None
                if call.attempt >= self.max_attempts or (
                    asked is None and not is_retryable(err, self.codes)
                ):
                    raise
                pause = random.uniform(
                    0, min(self.backoff_max, self.backoff * 2 ** (call.attempt - 1))
                )
                if asked is not None:
                    pause = max(pause, asked)
                if call.remaining() <= pause:
                    raise
                if not self.budget.try_retry():
                    self._refused.inc()
                    raise
                self._retries.inc()
                if pause:
                    await asyncio.sleep(pause)
                call.attempt += 1


def __getattr__(name: str) -> Any:
    """``MetricsMiddleware``, the client metrics step, moved to the metrics battery
    (``microframe.contrib.metrics.middleware.ClientMetricsMiddleware``); the old dotted path
    still names it in a ``CLIENT_MIDDLEWARE``, imported only when asked for."""
    if name == "MetricsMiddleware":
        from microframe.contrib.metrics.middleware import ClientMetricsMiddleware

        return ClientMetricsMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
