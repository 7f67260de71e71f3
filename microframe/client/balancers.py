"""Client-side load balancers: pick one instance of a service for a call.

``random``, ``round_robin``, ``weighted_random`` (instance weights) and ``p2c_ewma`` (the
default, as go-zero and Kratos do): the power of two random choices on a score built from an
exponentially weighted moving average of each instance's latency, its in-flight calls and its
recent success rate, so that a slow or failing instance gets less traffic without being starved
of the calls that show it recovered.

Every balancer is used from one event loop (its client's); ``pick``, ``start`` and ``done`` are
plain, quick, synchronous functions, with no await between reading and updating their state.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from microframe.discovery.instance import ServiceInstance


class Balancer(Protocol):
    """Chooses an instance for each call and learns from how calls went."""

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        """Return an instance not in ``exclude`` (ids) when there is one, else any; None if
        there is none."""
        ...

    def start(self, instance: ServiceInstance) -> float:
        """A call to ``instance`` starts; return a token (its start time) for :meth:`done`."""
        ...

    def done(self, instance: ServiceInstance, started: float, ok: bool) -> None:
        """A call to ``instance`` started at ``started`` ended, well (``ok``) or not."""
        ...


def _candidates(
    instances: Sequence[ServiceInstance], exclude: frozenset[str]
) -> Sequence[ServiceInstance]:
    if not exclude:
        return instances
    remaining = [i for i in instances if i.id not in exclude]
    return remaining or instances  # all tried: better another try on one than none


class _Stateless:
    def start(self, instance: ServiceInstance) -> float:
        return time.monotonic()

    def done(self, instance: ServiceInstance, started: float, ok: bool) -> None:
        pass


class RandomBalancer(_Stateless):
    """Uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        candidates = _candidates(instances, exclude)
        return self._rng.choice(candidates) if candidates else None


class RoundRobinBalancer(_Stateless):
    """Each instance in turn (in id order, whatever order discovery gives them)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        candidates = sorted(_candidates(instances, exclude), key=lambda i: i.id)
        if not candidates:
            return None
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class WeightedRandomBalancer(_Stateless):
    """At random, in proportion to the instances' ``weight`` (weight 0: only when nothing else)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        candidates = _candidates(instances, exclude)
        if not candidates:
            return None
        weights = [max(0, i.weight) for i in candidates]
        if not any(weights):
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights=weights)[0]


class _Stats:
    __slots__ = ("lag", "success", "inflight", "last", "picked", "samples")

    def __init__(self, now: float) -> None:
        self.lag = 0.0  # EWMA of latency, seconds
        self.success = 1.0  # EWMA of the success ratio
        self.inflight = 0
        self.last = now  # time of the last update
        self.picked = now  # last time it was chosen
        self.samples = 0


class P2CEwmaBalancer:
    """Power of two choices on ``sqrt(lag + penalty) * (inflight + 1) / success``.

    ``lag`` and ``success`` are EWMAs decaying with time (``decay`` seconds, as go-zero's
    10 s): recent calls count most. An instance not picked for ``force_pick`` seconds is picked
    once, so that a recovered instance gets the call that proves it.
    """

    def __init__(
        self,
        *,
        decay: float = 10.0,
        force_pick: float = 1.0,
        penalty: float = 0.005,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decay = decay
        self.force_pick = force_pick
        self.penalty = penalty
        self._rng = rng or random.Random()
        self._clock = clock
        self._stats: dict[str, _Stats] = {}

    def _get(self, instance: ServiceInstance) -> _Stats:
        stats = self._stats.get(instance.id)
        if stats is None:
            stats = self._stats[instance.id] = _Stats(self._clock())
        return stats

    def _load(self, stats: _Stats) -> float:
        return math.sqrt(stats.lag + self.penalty) * (stats.inflight + 1) / max(stats.success, 0.01)

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        candidates = _candidates(instances, exclude)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        n = len(candidates)
        draw = self._rng.random
        i = int(draw() * n)  # randrange(n), at a third of its cost
        j = int(draw() * (n - 1))
        a, b = candidates[i], candidates[j + 1 if j >= i else j]
        sa, sb = self._get(a), self._get(b)
        if self._load(sa) > self._load(sb):
            a, sa, b, sb = b, sb, a, sa
        # a is the less loaded; b gets a turn if it has not had one for a while.
        now = self._clock()
        if now - sb.picked > self.force_pick:
            sb.picked = now
            return b
        sa.picked = now
        return a

    def start(self, instance: ServiceInstance) -> float:
        self._get(instance).inflight += 1
        return self._clock()

    def done(self, instance: ServiceInstance, started: float, ok: bool) -> None:
        stats = self._get(instance)
        now = self._clock()
        stats.inflight = max(0, stats.inflight - 1)
        latency = max(0.0, now - started)
        # The first sample is the average; later ones move it by how much time passed.
        weight = math.exp(-max(0.0, now - stats.last) / self.decay) if stats.samples else 0.0
        stats.samples += 1
        stats.lag = stats.lag * weight + latency * (1 - weight)
        stats.success = stats.success * weight + (1.0 if ok else 0.0) * (1 - weight)
        stats.last = now

    def forget(self, keep: set[str]) -> None:
        """Drop the statistics of instances no longer in discovery."""
        for key in [k for k in self._stats if k not in keep]:
            del self._stats[key]


BALANCERS: dict[str, Callable[[], Balancer]] = {
    "random": RandomBalancer,
    "round_robin": RoundRobinBalancer,
    "weighted_random": WeightedRandomBalancer,
    "p2c_ewma": P2CEwmaBalancer,
}


def make_balancer(name: str) -> Balancer:
    """Return a new balancer by name (see :data:`BALANCERS`) or dotted path of a class."""
    factory = BALANCERS.get(name)
    if factory is None:
        from microframe.core.exceptions import ImproperlyConfigured
        from microframe.utils.module_loading import import_string

        try:
            factory = import_string(name)
        except ImportError:
            raise ImproperlyConfigured(
                f"Unknown balancer {name!r}: use one of {', '.join(sorted(BALANCERS))} "
                "or a dotted path."
            ) from None
    return factory()
