"""Rate limiters behind one small protocol.

Every backend answers two questions for ``count`` permits (one per call, usually):

- ``try_acquire(count)``: take them now if they are there. Returns ``0.0`` when they were
  taken, else how many seconds until they could be (the caller's retry-after hint), taking
  nothing.
- ``acquire(count, max_wait)``: take them, waiting up to ``max_wait`` seconds for them; the
  wait is reserved at once (first come, first served, as Go's ``x/time/rate``), so waiters do
  not race each other. Returns the seconds it waited (``>= 0``), or, when it would have had
  to wait longer than ``max_wait``, minus the seconds it would have had to wait (``< 0``; the
  retry-after hint), taking nothing.

Local backends (``TokenBucket``, ``LeakyBucket``, ``FixedWindowCounter``, ``SlidingWindow``)
keep their state in the process, decide without any I/O, and are safe to share between tasks
and threads (a lock around a few arithmetic operations). :class:`~microframe.contrib.limiter.
redis.RedisLimiter` shares one limit between every process and host of a service; its methods
are coroutines (``is_async = True``).

These are written here rather than taken from a package: each is a handful of arithmetic on a
clock, the clock must be injectable (the tests drive it), and the middleware needs the
retry-after and reservation semantics above, which the Python packages (``limits``,
``pyrate-limiter``) do not offer together.

Choosing one (see the limiter documentation for a plot of each under a bursty load):

``TokenBucket(rate, burst)``
    the one used most: allows bursts of up to ``burst`` calls, and ``rate`` calls per second on
    average. (The default of ``LIMITER``, with a rate no fresh service reaches.)
``LeakyBucket(rate, capacity)``
    smooth output: calls go through at most one every ``1/rate`` seconds, never in a burst;
    in ``wait`` mode up to ``capacity`` calls queue for their turn. Shapes traffic for a
    fragile backend.
``FixedWindowCounter(limit, window)``
    at most ``limit`` calls per window of ``window`` seconds, counted from a clean slate at
    each window's start: simple, but up to ``2 * limit`` calls can pass within one window's
    length across a boundary (the end of one window and the start of the next).
``SlidingWindow(limit, window)``
    the counter without that edge: the previous window's count is weighted by how much of it
    still overlaps the sliding window (Cloudflare's approximation; one counter per window).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]


@runtime_checkable
class Limiter(Protocol):
    """What the rate-limit middleware needs of a backend."""

    is_async: bool

    def try_acquire(self, count: int = 1) -> float: ...

    async def acquire(self, count: int = 1, max_wait: float = math.inf) -> float: ...


def _positive(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not number > 0 or math.isinf(number):
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return number


class _LocalLimiter:
    """Shared by the local backends: a lock, a clock, and ``acquire`` on top of ``_reserve``."""

    is_async = False

    def __init__(self, clock: Clock | None) -> None:
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()

    def _reserve(self, count: int, max_wait: float) -> float:  # pragma: no cover - overridden
        """Take ``count`` permits, now or at a reserved time up to ``max_wait`` seconds away:
        return the wait, or -(seconds until they could be had) when that is beyond it."""
        raise NotImplementedError

    def try_acquire(self, count: int = 1) -> float:
        with self._lock:
            wait = self._reserve(count, 0.0)
        return 0.0 if wait >= 0 else -wait

    async def acquire(self, count: int = 1, max_wait: float = math.inf) -> float:
        with self._lock:
            wait = self._reserve(count, max_wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


class TokenBucket(_LocalLimiter):
    """``rate`` permits per second, up to ``burst`` saved up (the bucket starts full)."""

    def __init__(
        self, rate: float, burst: float | None = None, *, clock: Clock | None = None
    ) -> None:
        super().__init__(clock)
        self.rate = _positive("rate", rate)
        self.burst = _positive("burst", burst if burst is not None else max(1.0, self.rate))
        self._tokens = self.burst
        self._last = self._clock()

    def _reserve(self, count: int, max_wait: float) -> float:
        if count > self.burst:
            return -math.inf  # never: more than the bucket holds
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= count:
            self._tokens = tokens - count
            return 0.0
        wait = (count - tokens) / self.rate
        if wait > max_wait:
            self._tokens = tokens
            return -wait
        self._tokens = tokens - count  # below zero: the permits of the calls waiting
        return wait

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g})"


class LeakyBucket(_LocalLimiter):
    """Calls leave at ``rate`` per second, evenly; up to ``capacity`` may wait for their turn.

    The bucket is a queue drained at a constant rate: a call is admitted at once only when the
    previous one left ``1/rate`` seconds ago or more; otherwise it waits for its turn (``wait``
    mode, while fewer than ``capacity`` calls are waiting) or is refused.
    """

    def __init__(self, rate: float, capacity: int = 1, *, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.rate = _positive("rate", rate)
        self.capacity = int(_positive("capacity", capacity))
        self._interval = 1.0 / self.rate
        self._next = -math.inf  # when the next call may leave

    def _reserve(self, count: int, max_wait: float) -> float:
        now = self._clock()
        turn = max(now, self._next)
        wait = turn - now
        waiting = wait * self.rate - 1  # calls waiting ahead of this one (not the one leaving)
        if wait > 0 and (wait > max_wait or waiting + count > self.capacity + 1e-9):
            return -wait
        self._next = turn + count * self._interval
        return wait

    def __repr__(self) -> str:
        return f"LeakyBucket(rate={self.rate:g}, capacity={self.capacity})"


class FixedWindowCounter(_LocalLimiter):
    """At most ``limit`` permits per window of ``window`` seconds (windows aligned on the clock)."""

    def __init__(self, limit: int, window: float = 1.0, *, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.limit = int(_positive("limit", limit))
        self.window = _positive("window", window)
        self._index = -1
        self._count = 0  # permits taken in window _index (reservations of later windows included)
        self._ahead: dict[int, int] = {}  # permits reserved in windows after the current one

    def _reserve(self, count: int, max_wait: float) -> float:
        if count > self.limit:
            return -math.inf
        now = self._clock()
        index = int(now // self.window)
        if index != self._index:
            self._index = index
            self._count = self._ahead.pop(index, 0)
            for old in [i for i in self._ahead if i < index]:
                del self._ahead[old]
        if self._count + count <= self.limit:
            self._count += count
            return 0.0
        # The first later window with room, within max_wait.
        target = index + 1
        while self._ahead.get(target, 0) + count > self.limit:
            target += 1
        wait = target * self.window - now
        if wait > max_wait:
            return -((index + 1) * self.window - now)
        self._ahead[target] = self._ahead.get(target, 0) + count
        return wait

    def __repr__(self) -> str:
        return f"FixedWindowCounter(limit={self.limit}, window={self.window:g})"


class SlidingWindow(_LocalLimiter):
    """At most ``limit`` permits in any ``window`` seconds, approximately: the count of the
    current window plus the previous window's count weighted by its share still inside the
    sliding window. Waiting is not reserved ahead: ``acquire`` waits for the estimate to drop,
    then takes its turn with the others (first come, not guaranteed first served)."""

    def __init__(self, limit: int, window: float = 1.0, *, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.limit = int(_positive("limit", limit))
        self.window = _positive("window", window)
        self._index = 0
        self._current = 0
        self._previous = 0

    def _estimate(self, now: float) -> float:
        index = int(now // self.window)
        if index != self._index:
            self._previous = self._current if index == self._index + 1 else 0
            self._current = 0
            self._index = index
        elapsed = now / self.window - index
        return self._previous * (1.0 - elapsed) + self._current

    def _reserve(self, count: int, max_wait: float) -> float:
        if count > self.limit:
            return -math.inf
        now = self._clock()
        estimate = self._estimate(now)
        if estimate + count <= self.limit:
            self._current += count
            return 0.0
        # When will the weighted previous count have decayed enough (or the next window come)?
        over = estimate + count - self.limit
        still_counted = 1.0 - (now / self.window - self._index)
        if self._previous > 0 and over <= self._previous * still_counted:
            wait = over / self._previous * self.window
        else:
            wait = (self._index + 1) * self.window - now
        return -max(wait, 1e-6)

    async def acquire(self, count: int = 1, max_wait: float = math.inf) -> float:
        loop_time = self._clock
        start = loop_time()
        while True:
            with self._lock:
                wait = self._reserve(count, 0.0)
            if wait >= 0:
                return loop_time() - start
            waited = loop_time() - start
            if waited - wait > max_wait:
                return wait
            await asyncio.sleep(-wait)

    def __repr__(self) -> str:
        return f"SlidingWindow(limit={self.limit}, window={self.window:g})"
