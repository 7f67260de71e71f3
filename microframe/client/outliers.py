"""What a client learns about the instances it calls: which answers say an instance (or the
backend as a whole) is unhealthy, the instances it keeps away from for a while after they
refused a connection (:class:`Ejections`), and how many retries it may still make
(:class:`RetryBudget`).

One of each per :class:`~microframe.client.Client`; the transport reports to them, the balancer
step and the retry step read them.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from microframe.core.exceptions import Unavailable

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


class InstanceUnreachable(Unavailable):
    """The call could not be sent: no connection to the instance chosen (refused, reset, not
    made within ``CONNECT_TIMEOUT``). Nothing reached a server, so the call is tried on
    another instance at once (not as a retry: the budget is for load on servers), and it
    says nothing of the service as a whole while other instances are not ejected."""


#: From this many instances ejected, the set handed out is made anew at most every
#: REMAKE_EVERY seconds (making it costs its size; a fleet of dead entries being found out
#: changes it on every call): an instance ejected meanwhile is skipped all the same, its
#: channel failing at once.
LARGE = 256
REMAKE_EVERY = 0.01


class Ejections:
    """Instances a client keeps away from for a while after they refused a connection.

    An instance that answers UNAVAILABLE without reaching a handler (refused connection, reset,
    shutting down) is not chosen for ``base`` seconds, doubling with each new failure up to
    ``maximum`` (each pause jittered between half and all of it), unless every instance is
    ejected; one success, or discovery listing it anew (it had left), brings it back; a
    change of other instances does not. With a ``prober`` (the client's: does it accept a
    connection?), a pause that ends is followed by a probe in the background, and only a
    probe that succeeds brings the instance back: calls never find out for themselves that a
    dead instance is still dead. This is what keeps a dead instance from taking a
    share of the calls until discovery drops it (grpc's own balancers skip subchannels in
    TRANSIENT_FAILURE the same way).
    """

    def __init__(
        self,
        base: float = 1.0,
        maximum: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._draw = (rng or random.Random()).random
        self._until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}
        # (until, id) of every ejection, soonest first (an id ejected again has a newer one;
        # the older is passed over), and the set handed out until it changes: a pick can
        # then tell it is the one it saw before (balancers keep their view of the instances
        # left per set), and a call costs no walk of a fleet of ejected instances.
        self._expiries: list[tuple[float, str]] = []
        self._current: frozenset[str] = frozenset()
        #: ``async prober(instance_id) -> bool``: when set, an ejection that ends is first
        #: probed in the background (a connection accepted brings the instance back).
        self.prober: Callable[[str], Awaitable[bool | None]] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._dirty = False  # _current is behind _until (a large set, made anew soon)
        self._made_at = float("-inf")

    def __bool__(self) -> bool:
        return bool(self._until)

    def eject(self, instance_id: str) -> None:
        strikes = self._strikes.get(instance_id, 0) + 1
        self._strikes[instance_id] = strikes
        pause = min(self.maximum, self.base * 2 ** min(strikes - 1, 32))
        # Jittered, between half the pause and all of it: instances ejected together (a
        # fleet of dead entries found in the same second) come back one by one, not in a
        # burst of failures every 1, 2, 4... seconds.
        pause *= 0.5 + 0.5 * self._draw()
        until = self._clock() + pause
        self._until[instance_id] = until
        heapq.heappush(self._expiries, (until, instance_id))
        if instance_id not in self._current:
            self._changed()

    def strikes(self, instance_id: str) -> int:
        """How many times in a row ``instance_id`` was ejected (0: it is not)."""
        return self._strikes.get(instance_id, 0)

    def clear(self, instance_id: str) -> None:
        self._strikes.pop(instance_id, None)
        if self._until.pop(instance_id, None) is not None:
            self._changed()

    def drop(self, instance_id: str) -> None:
        """Forget ``instance_id`` (gone from discovery): its strikes too."""
        self.clear(instance_id)

    def current(self) -> frozenset[str]:
        """The instances kept away from now: the same set object until one comes or goes."""
        expiries = self._expiries
        if expiries and expiries[0][0] <= self._clock():
            now = self._clock()
            changed = False
            while expiries and expiries[0][0] <= now:
                until, key = heapq.heappop(expiries)
                if self._until.get(key) == until:
                    if self.prober is not None and self._probation(key):
                        continue  # still kept away from, until its probe says
                    del self._until[key]
                    changed = True
            if changed:
                self._changed()
        if self._dirty and (
            len(self._until) < LARGE or time.monotonic() - self._made_at >= REMAKE_EVERY
        ):
            self._remake()
        return self._current

    def _probation(self, key: str) -> bool:
        """Probe ``key`` in the background rather than let calls find out whether it is back:
        success brings it back, failure ejects it again (for longer). False: no probe can
        be made now (no event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        assert self.prober is not None
        # Kept away from while probed, for at most the longest pause: a probe that never
        # answers (its loop ended first) is followed by another then.
        until = self._until[key] = self._clock() + self.maximum
        heapq.heappush(self._expiries, (until, key))
        task = loop.create_task(self._probe(key, until, self.prober))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)
        return True

    async def _probe(
        self, key: str, until: float, prober: Callable[[str], Awaitable[bool | None]]
    ) -> None:
        back: bool | None = True  # cancelled (the loop ends): let calls find out
        try:
            back = await prober(key)
        except Exception:  # a probe that fails says no
            back = False
        finally:
            if self._until.get(key) == until:  # not cleared, forgotten or ejected meanwhile
                if back is None:
                    self.drop(key)  # no longer listed
                elif back:
                    self.clear(key)
                else:
                    self.eject(key)

    def _changed(self) -> None:
        if len(self._until) < LARGE:
            self._remake()
        else:
            self._dirty = True

    def _remake(self) -> None:
        self._current = frozenset(self._until)
        self._dirty = False
        self._made_at = time.monotonic()


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
