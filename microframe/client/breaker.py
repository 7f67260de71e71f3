"""Circuit breaking, per called service and method, shared by the clients of a process.

Two modes (``BREAKER["MODE"]``):

``hystrix`` (the default; the seed's semantics, with Hystrix's names)
    Calls are counted in a rolling window (``WINDOW`` seconds in ``BUCKETS`` buckets). When the
    window holds at least ``REQUEST_VOLUME_THRESHOLD`` calls and at least
    ``ERROR_PERCENT_THRESHOLD`` % of them failed, the circuit *opens*: calls fail at once with
    UNAVAILABLE, without touching the network. After ``SLEEP_WINDOW`` seconds it is
    *half-open*: one call at a time goes through as a probe; ``HALF_OPEN_PROBES`` successes in a
    row close it, one failure opens it again for another sleep window.
    ``MAX_CONCURRENT_REQUESTS`` bounds the calls in flight (the ones over it fail at once).

``sre`` (Google SRE adaptive throttling, as Kratos and go-zero)
    Each call is refused locally with probability ``max(0, (requests - K * accepts) /
    (requests + 1))`` over the rolling window: as the backend fails, clients shed a growing
    share of their calls themselves, and take it back as soon as calls succeed again.

Only failures that say the backend is unhealthy count: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
RESOURCE_EXHAUSTED, UNKNOWN (:data:`microframe.client.outliers.UNHEALTHY`, the set the balancers'
feedback uses too), and an exception that is no RPC error at all. A business error
(INVALID_ARGUMENT, NOT_FOUND, ...) is an answer from a healthy backend and counts as a success.
A call that could not connect to the instances it tried while others were not ejected says
nothing of the service (dead entries in the registry, being found out) and is not counted.

This is written here rather than taken from a package: the Python circuit breakers on PyPI
(pybreaker, aiobreaker, circuitbreaker) count consecutive failures, not an error rate over a
rolling window, have no SRE mode, and are not asyncio-native; the whole of it is a few counters.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from microframe.client.outliers import UNHEALTHY, Ejections, InstanceUnreachable
from microframe.core.exceptions import (
    ImproperlyConfigured,
    MiddlewareNotUsed,
    RpcError,
    Unavailable,
)

if TYPE_CHECKING:
    from microframe.client.options import ClientOptions

DEFAULTS: dict[str, Any] = {
    "ENABLED": True,
    "MODE": "hystrix",
    "WINDOW": 10.0,
    "BUCKETS": 10,
    "REQUEST_VOLUME_THRESHOLD": 20,
    "ERROR_PERCENT_THRESHOLD": 50,
    "SLEEP_WINDOW": 5.0,
    "HALF_OPEN_PROBES": 3,
    "MAX_CONCURRENT_REQUESTS": 1000,
    "K": 2.0,
}

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}


class Window:
    """Successes and failures over the last ``length`` seconds, in ``buckets`` buckets."""

    def __init__(self, length: float, buckets: int, clock: Callable[[], float]) -> None:
        self.width = length / buckets
        self.size = buckets
        self._clock = clock
        self._ok = [0] * buckets
        self._failed = [0] * buckets
        self._slot = [-1] * buckets

    def _bucket(self) -> int:
        n = math.floor(self._clock() / self.width)
        i = n % self.size
        if self._slot[i] != n:
            self._slot[i], self._ok[i], self._failed[i] = n, 0, 0
        return i

    def add(self, ok: bool) -> None:
        i = self._bucket()
        if ok:
            self._ok[i] += 1
        else:
            self._failed[i] += 1

    def totals(self) -> tuple[int, int]:
        """Return (successes, failures) of the window."""
        n = math.floor(self._clock() / self.width)
        live = [i for i in range(self.size) if n - self._slot[i] < self.size]
        return sum(self._ok[i] for i in live), sum(self._failed[i] for i in live)

    def reset(self) -> None:
        self._slot = [-1] * self.size


class CircuitBreaker:
    """The breaker of one service method (see the module's description)."""

    def __init__(
        self,
        name: tuple[str, str],
        options: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.mode = options["MODE"]
        if self.mode not in ("hystrix", "sre"):
            raise ImproperlyConfigured(
                f'BREAKER["MODE"] must be "hystrix" or "sre", not {self.mode!r}.'
            )
        self.options = options
        self._clock = clock
        self._rng = rng or random.Random()
        self.window = Window(float(options["WINDOW"]), int(options["BUCKETS"]), clock)
        self.state = CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._probe_successes = 0
        self.inflight = 0
        self._lock = threading.Lock()  # clients in several threads may share a breaker
        self._metrics = _metrics()
        self._state_gauge = self._metrics[0].labels(*name)
        self._rejected = self._metrics[1].labels(*name)
        self._state_gauge.set(CLOSED)

    def reconfigure(self, options: dict[str, Any]) -> None:
        """Take new thresholds (``CLIENTS`` reloaded), keeping the state; a new ``WINDOW``
        or ``BUCKETS`` starts a new window."""
        mode = options["MODE"]
        if mode not in ("hystrix", "sre"):
            raise ImproperlyConfigured(f'BREAKER["MODE"] must be "hystrix" or "sre", not {mode!r}.')
        with self._lock:
            window_changed = (options["WINDOW"], options["BUCKETS"]) != (
                self.options["WINDOW"], self.options["BUCKETS"]
            )
            self.mode, self.options = mode, options
            if window_changed:
                self.window = Window(float(options["WINDOW"]), int(options["BUCKETS"]), self._clock)

    def _set(self, state: int) -> None:
        self.state = state
        self._state_gauge.set(state)

    def allow(self) -> bool:
        """Whether a call may go; when True the caller must call :meth:`done` once."""
        with self._lock:
            if self.inflight >= int(self.options["MAX_CONCURRENT_REQUESTS"]):
                return self._reject()
            if self.mode == "sre":
                ok, failed = self.window.totals()
                requests = ok + failed
                p = max(0.0, (requests - float(self.options["K"]) * ok) / (requests + 1))
                volume = int(self.options["REQUEST_VOLUME_THRESHOLD"])
                if requests >= volume and self._rng.random() < p:
                    self._set(OPEN)
                    return self._reject()
                if self.state != CLOSED and p == 0:
                    self._set(CLOSED)
            elif self.state == OPEN:
                if self._clock() - self._opened_at < float(self.options["SLEEP_WINDOW"]):
                    return self._reject()
                self._set(HALF_OPEN)
                self._probe_successes = 0
            if self.state == HALF_OPEN and self.mode == "hystrix":
                if self._probing:
                    return self._reject()
                self._probing = True
            self.inflight += 1
            return True

    def _reject(self) -> bool:
        self._rejected.inc()
        return False

    def done(self, ok: bool) -> None:
        """A call allowed by :meth:`allow` ended; ``ok``: the backend answered as a healthy one."""
        with self._lock:
            self.inflight -= 1
            self.window.add(ok)
            if self.mode == "sre":
                return
            if self.state == HALF_OPEN:
                self._probing = False
                if not ok:
                    self._open()
                    return
                self._probe_successes += 1
                if self._probe_successes >= int(self.options["HALF_OPEN_PROBES"]):
                    self.window.reset()
                    self._set(CLOSED)
                return
            if self.state == CLOSED and not ok:
                ok_count, failed = self.window.totals()
                total = ok_count + failed
                if total >= int(self.options["REQUEST_VOLUME_THRESHOLD"]) and (
                    failed * 100 >= float(self.options["ERROR_PERCENT_THRESHOLD"]) * total
                ):
                    self._open()

    def skip(self) -> None:
        """A call allowed by :meth:`allow` ended without saying anything of the backend: not
        counted (a half-open circuit lets its next probe through)."""
        with self._lock:
            self.inflight -= 1
            self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(OPEN)


_metric_lock = threading.Lock()
_metric_objects: tuple[Any, Any] | None = None


def _metrics() -> tuple[Any, Any]:
    global _metric_objects
    if _metric_objects is None:
        with _metric_lock:
            if _metric_objects is None:
                from prometheus_client import REGISTRY, Counter, Gauge

                _metric_objects = (
                    Gauge(
                        "microframe_client_circuit_state",
                        "State of the circuit breaker of a called method: "
                        "0 closed, 1 open, 2 half-open.",
                        ("service", "method"),
                        registry=REGISTRY,
                        multiprocess_mode="max",
                    ),
                    Counter(
                        "microframe_client_circuit_rejected",
                        "Calls refused by the client's circuit breaker without being sent.",
                        ("service", "method"),
                        registry=REGISTRY,
                    ),
                )
    return _metric_objects


_breakers: dict[tuple[str, str], CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_options(configured: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(DEFAULTS)
    for key, value in (configured or {}).items():
        if key not in DEFAULTS:
            raise ImproperlyConfigured(
                f"Unknown BREAKER option {key!r}; known: {', '.join(sorted(DEFAULTS))}."
            )
        options[key] = value
    return options


def get_breaker(service: str, method: str, options: dict[str, Any]) -> CircuitBreaker:
    """The breaker of ``method`` of ``service``, shared by the clients of the process."""
    key = (service, method)
    with _breakers_lock:
        breaker = _breakers.get(key)
        if breaker is None:
            breaker = _breakers[key] = CircuitBreaker(key, options)
        elif breaker.options != options:
            breaker.reconfigure(options)
    return breaker


class CircuitBreakerMiddleware:
    """The client chain's breaker step: refuse with UNAVAILABLE while the circuit is open."""

    def __init__(
        self,
        next: Any,
        *,
        service: str,
        method: str,
        options: ClientOptions,
        ejections: Ejections | None = None,
        **kwargs: Any,
    ) -> None:
        breaker = options.breaker
        if not breaker["ENABLED"]:
            raise MiddlewareNotUsed
        self.next = next
        self.breaker = get_breaker(service, method, breaker)
        self.ejections = ejections
        self._message = f"circuit open for {service}{method}: failing fast"

    async def __call__(self, call: Any) -> Any:
        breaker = self.breaker
        if not breaker.allow():
            raise Unavailable(
                self._message, trailers={"x-microframe-circuit": STATE_NAMES[breaker.state]}
            )
        ok: bool | None = True
        try:
            return await self.next(call)
        except InstanceUnreachable:
            ok = None if self._others_left(call) else False
            raise
        except RpcError as err:
            ok = err.code not in UNHEALTHY
            raise
        except BaseException:
            ok = False
            raise
        finally:
            if ok is None:
                breaker.skip()
            else:
                breaker.done(ok)

    def _others_left(self, call: Any) -> bool:
        """Whether some instance of the call's was not ejected when it failed to connect: the
        failure then says something of the instances tried, not of the service (a fleet
        with dead entries, being found out); with every instance ejected, it counts."""
        ejections = self.ejections
        if not ejections:
            return False
        ejected = ejections.current()
        return any(instance.id not in ejected for instance in call.instances)


_retry_counters: dict[bool, Any] = {}


def retry_counter(refused: bool = False) -> Any:
    """``microframe_client_retries_total`` (retries made) or, with ``refused``,
    ``microframe_client_retries_refused_total`` (retries the budget did not allow)."""
    with _metric_lock:
        counter = _retry_counters.get(refused)
        if counter is None:
            from prometheus_client import REGISTRY, Counter

            name, text = (
                ("microframe_client_retries_refused", "Retries the retry budget did not allow.")
                if refused
                else ("microframe_client_retries", "Calls retried on another attempt.")
            )
            counter = _retry_counters[refused] = Counter(
                name, text, ("service", "method"), registry=REGISTRY
            )
    return counter
