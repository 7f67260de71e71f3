"""The balancers' picks: their distributions, with and without exclusions, and a cost that
does not grow with the fleet (microframe.client.balancers)."""

from __future__ import annotations

import collections
import random
import time

import pytest

from microframe.client.balancers import (
    P2CEwmaBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedRandomBalancer,
    make_balancer,
)
from microframe.discovery.instance import ServiceInstance


def fleet(n: int, weight=lambda i: 100) -> list[ServiceInstance]:  # type: ignore[no-untyped-def]
    return [
        ServiceInstance(name="s", id=f"i{i:05d}", host="127.0.0.1", port=10000 + i % 50000,
                        weight=weight(i))
        for i in range(n)
    ]


def picks(balancer, instances, exclude=frozenset(), count=20_000):  # type: ignore[no-untyped-def]
    return collections.Counter(balancer.pick(instances, exclude).id for _ in range(count))


@pytest.mark.parametrize("name", ["random", "round_robin", "weighted_random", "p2c_ewma"])
def test_an_excluded_instance_is_never_picked_while_another_is_there(name) -> None:
    instances = fleet(10)
    balancer = make_balancer(name)
    few = frozenset({"i00001", "i00002"})
    many = frozenset(i.id for i in instances[:9])
    assert not set(picks(balancer, instances, few, 2000)) & few
    assert set(picks(balancer, instances, many, 500)) == {"i00009"}
    # Every one excluded: better another try on one than none.
    assert picks(balancer, instances, frozenset(i.id for i in instances), 50)
    assert balancer.pick([], few) is None


def test_random_is_uniform_over_the_instances_left() -> None:
    instances = fleet(10)
    counts = picks(RandomBalancer(random.Random(1)), instances, frozenset({"i00000", "i00001"}))
    assert len(counts) == 8
    assert max(counts.values()) / min(counts.values()) < 1.25, counts


def test_round_robin_takes_each_left_in_turn() -> None:
    instances = fleet(6)
    random.Random(2).shuffle(instances)  # whatever order discovery gives
    balancer = RoundRobinBalancer()
    order = [balancer.pick(instances).id for _ in range(12)]
    assert order[:6] == sorted(order[:6]) and order[6:] == order[:6]
    counts = picks(balancer, instances, frozenset({"i00003"}), 5000)
    assert set(counts) == {"i00000", "i00001", "i00002", "i00004", "i00005"}
    assert max(counts.values()) - min(counts.values()) <= 2 * len(counts), counts


def test_weighted_random_follows_the_weights_of_those_left() -> None:
    instances = fleet(4, weight=lambda i: [100, 300, 0, 600][i])
    counts = picks(WeightedRandomBalancer(random.Random(3)), instances, frozenset({"i00003"}))
    assert set(counts) == {"i00000", "i00001"}  # weight 0: only when nothing else
    assert 2.6 < counts["i00001"] / counts["i00000"] < 3.4, counts
    counts = picks(WeightedRandomBalancer(random.Random(4)), instances)
    assert 1.8 < counts["i00003"] / counts["i00001"] < 2.2, counts
    zero = fleet(3, weight=lambda i: 0)
    assert len(picks(WeightedRandomBalancer(), zero, count=3000)) == 3


def test_p2c_spreads_unloaded_instances_evenly_with_exclusions() -> None:
    now = [0.0]
    balancer = P2CEwmaBalancer(rng=random.Random(5), clock=lambda: now[0])
    instances = fleet(8)
    counts = picks(balancer, instances, frozenset({"i00000"}), 16_000)
    assert len(counts) == 7
    assert max(counts.values()) / min(counts.values()) < 1.3, counts


@pytest.mark.parametrize("name", ["random", "round_robin", "weighted_random", "p2c_ewma"])
def test_a_pick_costs_the_same_at_any_fleet_size(name) -> None:
    """At 10,000 instances, with none, one (a retry) or all but three (a fleet of dead
    instances, ejected: the client hands the same set over until it changes) excluded, a
    pick costs microseconds, not a walk of the fleet."""
    instances = fleet(10_000, weight=lambda i: 1 + i % 7)
    balancer = make_balancer(name)
    dead = frozenset(i.id for i in instances[3:])
    for exclude in (frozenset(), frozenset({"i00042"}), dead):
        balancer.pick(instances, exclude)  # the views made once
        started = time.perf_counter()
        for _ in range(2000):
            chosen = balancer.pick(instances, exclude)
        each = (time.perf_counter() - started) / 2000
        assert chosen is not None and chosen.id not in exclude
        # Walking the fleet cost 340-1,600 µs a pick; the bound leaves a slow machine room.
        assert each < 50e-6, (name, len(exclude), each)


def test_ejections_hand_out_one_set_until_it_changes() -> None:
    from microframe.client.outliers import Ejections

    now = [0.0]
    ejections = Ejections(base=1.0, maximum=4.0, clock=lambda: now[0], rng=_Longest())
    assert not ejections and ejections.current() == frozenset()
    ejections.eject("a")
    ejections.eject("b")
    first = ejections.current()
    assert first == {"a", "b"} and ejections.current() is first
    ejections.clear("c")  # a success of an instance not ejected changes nothing
    assert ejections.current() is first
    ejections.eject("a")  # again: 2 s now, the set unchanged
    assert ejections.current() is first
    now[0] = 1.5  # b's second is over, a's two are not
    assert ejections.current() == {"a"}
    now[0] = 2.5
    assert ejections.current() == frozenset() and not ejections
    for _ in range(5):
        ejections.eject("a")  # 1, 2, 4, then capped at 4
    now[0] = 6.4
    assert ejections.current() == {"a"}
    now[0] = 6.6
    assert ejections.current() == frozenset()
    ejections.eject("b")
    ejections.clear("b")  # a success brings it back at once
    assert ejections.current() == frozenset()


class _Longest(random.Random):
    """Jitter that always draws the whole pause."""

    def random(self) -> float:
        return 1.0


def test_ejections_together_come_back_one_by_one() -> None:
    """Instances ejected in the same instant (dead entries found together) are given their
    next chance at different times, between half their pause and all of it."""
    from microframe.client.outliers import Ejections

    now = [0.0]
    ejections = Ejections(base=1.0, clock=lambda: now[0], rng=random.Random(6))
    for i in range(100):
        ejections.eject(f"dead{i}")
    back = []
    for step in range(1, 21):
        now[0] = step * 0.05
        back.append(100 - len(ejections.current()))
    assert back[8] == 0 and back[-1] == 100, back  # none before 0.5 s, all by 1 s
    assert len({b for b in back[9:20]}) >= 8, back  # one by one, not at once


async def test_an_unrelated_registry_change_keeps_the_ejections() -> None:
    """With a discovery object of the user's, handing over whole lists (no ``changes``): the
    client works out what changed itself (tests/client/test_fleet.py has discovery's own)."""
    from microframe.client.client import Client

    class Discovery:
        def subscribe(self, service: str, listener) -> None:  # type: ignore[no-untyped-def]
            self.listener = listener

    discovery = Discovery()
    client = Client("s", discovery=discovery)
    instances = fleet(5)
    client.membership.follow(discovery, "s", instances)
    client.ejections.eject("i00001")
    client.ejections.eject("i00002")
    # Another instance's weight changes, one more registers: the dead stay kept away from.
    changed = [*instances[:4], fleet(5, weight=lambda i: 7)[4], *fleet(6)[5:]]
    discovery.listener("s", changed)
    assert client.ejections.current() == {"i00001", "i00002"}
    # One leaves and registers anew: it gets its chance again; one gone is forgotten.
    discovery.listener("s", [i for i in changed if i.id != "i00001"])
    discovery.listener("s", changed)
    assert client.ejections.current() == {"i00002"}
    discovery.listener("s", [i for i in changed if i.id != "i00002"])
    assert client.ejections.current() == frozenset()


@pytest.mark.parametrize("rate", [50, 2000])
def test_p2c_forced_picks_never_give_slow_instances_more_than_their_share(rate: int) -> None:
    """200 instances, 20 of them ten times slower; ``rate`` calls per (simulated) second. With
    fewer calls per second than instances, go-zero's time-only forced pick sent the slow ones
    1.4 to 1.5 times their fair share (every instance "not picked for a second", the worse of
    a pair forced): they must get less than their share, at any rate."""
    now = [0.0]
    balancer = P2CEwmaBalancer(clock=lambda: now[0], rng=random.Random(3))
    instances = fleet(200)
    slow = {i.id for i in instances[:20]}
    counts: collections.Counter[str] = collections.Counter()
    for n in range(rate * 60):
        now[0] = n / rate
        chosen = balancer.pick(instances)
        assert chosen is not None
        token = balancer.start(chosen)
        now[0] += 0.1 if chosen.id in slow else 0.01
        balancer.done(chosen, token, True)
        if n >= rate * 10:  # after the first ten seconds (every instance sampled)
            counts["slow" if chosen.id in slow else "fast"] += 1
    share = counts["slow"] / sum(counts.values())
    assert share < 0.10, share
    assert share > 0.0  # not starved: a recovered instance gets the calls that show it


def subsets() -> tuple[list[ServiceInstance], list[ServiceInstance], list[ServiceInstance]]:
    """A fleet of 12: 10 uncolored instances, 2 canaries, as a color router hands them out."""
    instances = fleet(12)
    return instances, instances[:10], instances[10:]


def test_round_robin_takes_turns_within_each_subset_picked_in_alternation() -> None:
    """Uncolored and canary calls in alternation: with one counter for both, the canary calls
    saw every other turn of it and always went to the same canary."""
    _, plain, canary = subsets()
    balancer = RoundRobinBalancer()
    plain_counts: collections.Counter[str] = collections.Counter()
    canary_counts: collections.Counter[str] = collections.Counter()
    for _ in range(100):
        plain_counts[balancer.pick(plain).id] += 1  # type: ignore[union-attr]
        canary_counts[balancer.pick(canary).id] += 1  # type: ignore[union-attr]
    assert canary_counts == {"i00010": 50, "i00011": 50}
    assert set(plain_counts.values()) == {10}


@pytest.mark.parametrize("name", ["random", "round_robin", "weighted_random", "p2c_ewma"])
def test_subsets_picked_in_turn_keep_their_views(name: str) -> None:
    """A client's calls of several colors pick from several lists in turn: each keeps the view
    made for it (a pick stays O(1), p2c's turns stay the subset's), up to VIEWS lists."""
    from microframe.client.balancers import VIEWS

    everyone, plain, canary = subsets()
    balancer = make_balancer(name)
    lists = [everyone, plain, canary]
    views = {}
    for instances in lists:
        balancer.pick(instances)
        views[id(instances)] = balancer._view_of(instances)  # type: ignore[attr-defined]
    for _ in range(3):
        for instances in lists:
            assert balancer.pick(instances) in instances
            assert balancer._view_of(instances) is views[id(instances)]  # type: ignore[attr-defined]
    # Many more lists (discovery's sets over time): the least recently used views go.
    others = [fleet(3) for _ in range(VIEWS)]
    for instances in others:
        balancer.pick(instances)
    assert len(balancer._views) == VIEWS  # type: ignore[attr-defined]
    assert balancer._view_of(everyone) is not views[id(everyone)]  # type: ignore[attr-defined]


def test_p2c_a_small_subset_is_not_forced_by_the_picks_of_a_busy_one() -> None:
    """20 uncolored calls for one canary call; one of the two canaries is ten times slower.
    With one count of picks for the whole balancer the busy subset's picks made every canary
    pick "forced" once a second had passed: the slow canary, always the worse of the pair, got
    every canary call. Counted per subset, it gets less than its share."""
    now = [0.0]
    balancer = P2CEwmaBalancer(clock=lambda: now[0], rng=random.Random(5))
    _, plain, canary = subsets()
    slow = canary[1].id
    counts: collections.Counter[str] = collections.Counter()
    for n in range(20 * 600):
        now[0] = n * 0.1
        instances = canary if n % 20 == 0 else plain
        chosen = balancer.pick(instances)
        assert chosen is not None
        token = balancer.start(chosen)
        now[0] += 0.1 if chosen.id == slow else 0.01
        balancer.done(chosen, token, True)
        if instances is canary and n >= 20 * 20:
            counts[chosen.id] += 1
    share = counts[slow] / sum(counts.values())
    print(f"slow canary's share of the canary calls: {share:.2f}")
    assert 0.0 < share < 0.3, counts
