"""What a client learns about the instances it calls: which answers say an instance (or the
backend as a whole) is unhealthy, the instances it keeps away from for a while after they
refused a connection (:class:`Ejections`), and how many retries it may still make
(:class:`RetryBudget`).

One of each per :class:`~microframe.client.Client`; the transport reports to them, the balancer
step and the retry step read them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import grpc

#: Status codes that say the instance answering is unhealthy, as opposed to a business error
#: (INVALID_ARGUMENT, NOT_FOUND...) that a healthy backend answers. The one set used by the
#: balancers' feedback (a failure counts against the instance's success rate) and by the
#: circuit breaker (a failure counts against the method's error rate).
UNHEALTHY: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
})


class Ejections:
    """Instances a client keeps away from for a while after they refused a connection.

    An instance that answers UNAVAILABLE without reaching a handler (refused connection, reset,
    shutting down) is not chosen for ``base`` seconds, doubling with each new failure up to
    ``maximum``, unless every instance is ejected; one success, or discovery listing it anew,
    brings it back. This is what keeps a dead instance from taking a share of the calls until
    discovery drops it (grpc's own balancers skip subchannels in TRANSIENT_FAILURE the same way).
    """

    def __init__(
        self,
        base: float = 1.0,
        maximum: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        pause = min(self.maximum, self.base * 2 ** (strikes - 1))
        self._until[instance_id] = self._clock() + pause

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

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        # Trimmed here too, not only when a retry is asked for: a client whose calls never fail
        # would otherwise keep the time of every call it ever made.
        now = self._clock()
        calls = self._calls
        limit = now - self.window
        while calls and calls[0] < limit:
            calls.popleft()
        calls.append(now)

    def try_retry(self) -> bool:
        now = self._clock()
        self._trim(now)
        allowed = self.ratio * len(self._calls) + self.min_per_second * self.window
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True
