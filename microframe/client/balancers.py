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
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Protocol

from microframe.discovery.cache import InstanceList
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


#: Draws a pick makes among all the instances, skipping the excluded ones, before it draws
#: among the others only (whose list it then makes, once per exclusion set).
_DRAWS = 4


class _View:
    """What a balancer derives from one list of instances, made once for it: discovery hands
    out a new list when the set changes and never changes one, so a pick is then O(1) (O(log
    N) weighted), exclusions included.

    A pick excluding a few instances (a retry's) draws among all and skips them; one
    excluding many (a fleet of dead instances, ejected) draws among the others, whose view is
    made once per exclusion set (the client hands the same set over until it changes).

    A view keeps the turns of its own picks: round-robin's next index, and p2c_ewma's count of
    picks and when each instance was last chosen from it. The calls of each subset (a color's
    instances, the uncolored ones) then take turns among themselves: two subsets picked from in
    alternation do not each see every other turn of one shared counter (always the same
    instance of each), and a small subset's instances are not forced by the picks of a busy
    one."""

    __slots__ = (
        "instances", "ordered", "cumulative", "total", "stats", "turn", "picked", "picked_turn",
        "_exclude", "_without",
    )

    def __init__(self, instances: Sequence[ServiceInstance], weighted: bool = False) -> None:
        self.instances = instances
        self.ordered: Sequence[ServiceInstance] = instances
        # p2c_ewma's statistics of each instance, index for index, filled as they are drawn:
        # a pick then reads two list items, not two instances' ids and a dictionary.
        self.stats: list[_Stats | None] = [None] * len(instances)
        self.turn = 0  # picks made from this view
        # p2c_ewma: when each instance was last chosen from this view, in time and in turns.
        self.picked: list[float] = []
        self.picked_turn: list[int] = []
        self.cumulative: list[int] = []
        self.total = 0
        if weighted:
            # Discovery's lists carry their weights (summed in C here); weights are >= 0.
            weights = getattr(instances, "weights", None)
            if weights is None or len(weights) != len(instances):
                weights = [i.weight for i in instances]
            self.cumulative = list(accumulate(weights))
            self.total = self.cumulative[-1] if self.cumulative else 0
        self._exclude: frozenset[str] | None = None
        self._without: _View | None = None

    def without(self, exclude: frozenset[str], weighted: bool = False) -> _View:
        """The view of the instances not in ``exclude`` (all of them when none is left:
        better another try on one than none)."""
        if self._without is None or (exclude is not self._exclude and exclude != self._exclude):
            remaining = [i for i in self.instances if i.id not in exclude]
            self._without = _View(remaining, weighted) if remaining else self
            self._exclude = exclude
        return self._without


#: Lists of instances a balancer keeps the views of: the subsets one client's calls are
#: routed to (colors, the uncolored instances, the whole set) with room to spare.
VIEWS = 8


class _Viewing:
    """Keeps the :class:`_View` of each of the last :data:`VIEWS` lists of instances picked
    from (by identity: discovery hands out a new list when a set changes, and the colors'
    router one list per subset), the last one first."""

    _weighted = False
    _view: _View | None = None
    _views: dict[int, _View] | None = None

    def _view_of(self, instances: Sequence[ServiceInstance]) -> _View:
        view = self._view
        if view is not None and view.instances is instances:
            return view
        views = self._views
        if views is None:
            views = self._views = {}
        # A view holds its list: the id of a list in here cannot be reused by another one.
        view = views.pop(id(instances), None)
        if view is None:
            view = self._make_view(instances)
            if len(views) >= VIEWS:
                del views[next(iter(views))]  # the least recently used
        views[id(instances)] = view  # last in: the most recently used
        self._view = view
        return view

    def _make_view(self, instances: Sequence[ServiceInstance]) -> _View:
        return _View(instances, self._weighted)


def _draw(
    view: _View, exclude: frozenset[str], choose: Callable[[_View], ServiceInstance]
) -> ServiceInstance:
    """``choose(view)`` until it gives an instance not in ``exclude`` (a few draws), then
    ``choose`` among the others only."""
    if exclude:
        for _ in range(_DRAWS):
            chosen = choose(view)
            if chosen.id not in exclude:
                return chosen
        return choose(view.without(exclude, bool(view.cumulative)))
    return choose(view)


class _Stateless(_Viewing):
    def start(self, instance: ServiceInstance) -> float:
        return time.monotonic()

    def done(self, instance: ServiceInstance, started: float, ok: bool) -> None:
        pass


class RandomBalancer(_Stateless):
    """Uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        draw = self._rng.random
        self._choose = lambda view: view.instances[int(draw() * len(view.instances))]

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        if not instances:
            return None
        return _draw(self._view_of(instances), exclude, self._choose)


class RoundRobinBalancer(_Stateless):
    """Each instance in turn (in id order, whatever order discovery gives them), the turns
    kept per subset of instances; the excluded ones are passed over."""

    def _make_view(self, instances: Sequence[ServiceInstance]) -> _View:
        view = _View(instances)
        if not isinstance(instances, InstanceList):  # discovery's are in id order already
            view.ordered = sorted(instances, key=lambda i: i.id)
        return view

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        if not instances:
            return None
        view = self._view_of(instances)
        if exclude:
            ordered = view.ordered
            n = len(ordered)
            for _ in range(_DRAWS):
                chosen = ordered[view.turn % n]
                view.turn += 1
                if chosen.id not in exclude:
                    return chosen
            view = view.without(exclude)
            if view.ordered is view.instances:  # the others' view, not yet in id order
                view.ordered = sorted(view.instances, key=lambda i: i.id)
        ordered = view.ordered
        chosen = ordered[view.turn % len(ordered)]
        view.turn += 1
        return chosen


class WeightedRandomBalancer(_Stateless):
    """At random, in proportion to the instances' ``weight`` (weight 0: only when nothing else)."""

    _weighted = True

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        draw = self._rng.random

        def choose(view: _View) -> ServiceInstance:
            if not view.total:
                return view.instances[int(draw() * len(view.instances))]
            return view.instances[bisect_right(view.cumulative, draw() * view.total)]

        self._choose = choose

    def pick(
        self, instances: Sequence[ServiceInstance], exclude: frozenset[str] = frozenset()
    ) -> ServiceInstance | None:
        if not instances:
            return None
        return _draw(self._view_of(instances), exclude, self._choose)


class _Stats:
    """What p2c_ewma knows of one instance, whichever subset its calls were picked from: its
    latency and success are the instance's, not a subset's (a call's color does not make an
    instance faster), and its calls in flight add up over all of them."""

    __slots__ = ("lag", "success", "inflight", "last", "samples")

    def __init__(self, now: float) -> None:
        self.lag = 0.0  # EWMA of latency, seconds
        self.success = 1.0  # EWMA of the success ratio
        self.inflight = 0
        self.last = now  # time of the last update
        self.samples = 0


class P2CEwmaBalancer(_Viewing):
    """Power of two choices on ``sqrt(lag + penalty) * (inflight + 1) / success``.

    ``lag`` and ``success`` are EWMAs decaying with time (``decay`` seconds, as go-zero's
    10 s): recent calls count most. The worse of the two is picked anyway when it has not been
    for ``force_pick`` seconds and for twice as many picks as there are instances, so that a
    recovered instance gets the call that proves it. go-zero forces on time alone: with fewer
    calls per second than instances every instance is then "not picked for a while", and the
    slow one of a pair is forced more often than not, getting more than its fair share; the
    count of picks keeps a slow instance under half of it, at any rate of calls. The picks
    and the last pick of each instance are counted per subset (:class:`_View`), so that the
    calls of a small subset (a canary's) do not force its slow instance for the picks of a
    busy one.
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
        if not instances:
            return None
        view = self._view_of(instances)
        if exclude:
            if len(exclude) * 4 <= len(instances):
                return self._pick_two(view, exclude)
            view = view.without(exclude)  # most are out: pick among the others
        if len(view.instances) == 1:
            return view.instances[0]
        return self._pick_two(view, None)

    def _pick_two(self, view: _View, exclude: frozenset[str] | None) -> ServiceInstance:
        """The better of two distinct instances of ``view`` drawn at random, none in
        ``exclude`` (a quarter of them at most: a pair with one is drawn again)."""
        candidates = view.instances
        n = len(candidates)
        draw = self._rng.random
        i = j = 0
        for _ in range(_DRAWS * 2):
            i = int(draw() * n)  # randrange(n), at a third of its cost
            j = int(draw() * (n - 1))
            if j >= i:
                j += 1
            if exclude is None or (
                candidates[i].id not in exclude and candidates[j].id not in exclude
            ):
                break
        else:  # many excluded after all
            assert exclude is not None
            remaining = [c for c in candidates if c.id not in exclude] or list(candidates)
            if len(remaining) == 1:
                return remaining[0]
            return self._pick_two(_View(remaining), None)
        stats = view.stats
        sa = stats[i]
        if sa is None:
            sa = stats[i] = self._get(candidates[i])
        sb = stats[j]
        if sb is None:
            sb = stats[j] = self._get(candidates[j])
        penalty, sqrt = self.penalty, math.sqrt  # _load, twice, without two calls
        if sqrt(sa.lag + penalty) * (sa.inflight + 1) * max(sb.success, 0.01) > sqrt(
            sb.lag + penalty
        ) * (sb.inflight + 1) * max(sa.success, 0.01):
            i, sa, j, sb = j, sb, i, sa
        # i is the less loaded; j gets a turn if it has not had one for a while.
        now = self._clock()
        picked, picked_turn = view.picked, view.picked_turn
        if not picked:  # the first pick from this view: every instance "just picked"
            picked = view.picked = [now] * n
            picked_turn = view.picked_turn = [0] * n
        view.turn = turn = view.turn + 1
        if now - picked[j] > self.force_pick and turn - picked_turn[j] > 2 * n:
            picked[j], picked_turn[j] = now, turn
            return candidates[j]
        picked[i], picked_turn[i] = now, turn
        return candidates[i]

    def start(self, instance: ServiceInstance) -> float:
        self._get(instance).inflight += 1
        return self._clock()

    def done(self, instance: ServiceInstance, started: float, ok: bool) -> None:
        stats = self._stats.get(instance.id)
        if stats is None:  # forgotten while the call was in flight: it left discovery
            return
        now = self._clock()
        stats.inflight = max(0, stats.inflight - 1)
        latency = max(0.0, now - started)
        # The first sample is the average; later ones move it by how much time passed.
        weight = math.exp(-max(0.0, now - stats.last) / self.decay) if stats.samples else 0.0
        stats.samples += 1
        stats.lag = stats.lag * weight + latency * (1 - weight)
        stats.success = stats.success * weight + (1.0 if ok else 0.0) * (1 - weight)
        stats.last = now

    def forget_instance(self, instance_id: str) -> None:
        """Drop the statistics of an instance gone from discovery (the lists it was in are
        gone too: discovery hands out a new one)."""
        self._stats.pop(instance_id, None)


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
