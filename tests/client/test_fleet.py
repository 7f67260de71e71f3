"""Discovery and balancing at fleet scale: changes applied in the work of what changed,
coalesced, saved off the event loop; the client's subset of a large fleet; and a fleet of dead
entries that a client gets through (microframe.discovery.cache, microframe.client.membership)."""

from __future__ import annotations

import asyncio
import collections
import statistics
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microframe.client import Client
from microframe.client.channels import get_channel_pool
from microframe.client.membership import Subset
from microframe.discovery import cache as cache_module
from microframe.discovery.cache import COALESCE, SNAPSHOT_INTERVAL, DiscoveryCache, InstanceList
from microframe.discovery.instance import ServiceInstance
from microframe.discovery.registry import Changes, Update

from example.generate import hello_pb2
from example.generate.hello_client import GreeterClient


def instance(i: int, weight: int = 100, port: int | None = None) -> ServiceInstance:
    return ServiceInstance(
        id=f"i{i:06d}", name="s", host="127.0.0.1", port=port or 10000 + i % 50000, weight=weight
    )


class QueueRegistry:
    """A registry backend whose watch yields what the test puts in its queue (the changes an
    etcd watch would yield), to drive the cache at sizes no test can register for real."""

    backend_name = "queue"

    def __init__(self, initial: list[ServiceInstance]) -> None:
        self.initial = initial
        self.updates: asyncio.Queue[Update] = asyncio.Queue()

    async def watch_changes(self, service: str) -> AsyncIterator[Update]:
        yield list(self.initial)
        while True:
            yield await self.updates.get()

    async def close(self) -> None:
        pass


async def until(predicate, timeout: float = 5.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.002)


async def test_a_change_costs_what_changed_not_the_size_of_the_fleet(tmp_path: Path) -> None:
    # 100,000 instances; the cache of the probe took 0.93 s of CPU per change there
    # (52 ms at 10,000), re-sorting and comparing the whole set on the event loop.
    registry = QueueRegistry([instance(i) for i in range(0, 200_000, 2)])
    cache = DiscoveryCache(registry, tmp_path)  # type: ignore[arg-type]
    first = await cache.instances("s")
    assert len(first) == 100_000 and isinstance(first, InstanceList)
    seen: list[InstanceList] = []
    cache.subscribe("s", lambda service, found: seen.append(found))
    costs = []
    for n in range(30):
        await asyncio.sleep(COALESCE)  # a quiet period: each change is notified at once
        put = Changes(put=[instance(2 * n + 1)]) if n % 3 == 0 else (
            Changes(deleted=[f"i{2 * n:06d}"]) if n % 3 == 1 else
            Changes(put=[instance(2 * n, weight=7)])
        )
        before = len(seen)
        cpu = time.thread_time()
        await registry.updates.put(put)
        await until(lambda before=before: len(seen) > before, what="the change")
        costs.append(time.thread_time() - cpu)
    # The copy of 100,000 pointers (in C) is what is left: well under a millisecond or two.
    assert statistics.median(costs) < 0.005, costs
    last = seen[-1]
    assert [i.id for i in last] == sorted(i.id for i in last)  # id order, kept by insertion
    assert last.weights == [i.weight for i in last]
    # What each listener call says changed: one instance at a time, of each kind.
    kinds = [(len(s.changes.added), len(s.changes.removed), len(s.changes.updated)) for s in seen]
    assert kinds[:3] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)], kinds
    assert seen[2].changes.updated[0][1].weight == 7
    await cache.close()


async def test_a_burst_of_changes_is_coalesced_and_saved_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[int] = []
    write = cache_module.atomic_write_text

    def recording_write(path, text):  # type: ignore[no-untyped-def]
        writers.append(threading.get_ident())
        write(path, text)

    monkeypatch.setattr(cache_module, "atomic_write_text", recording_write)
    registry = QueueRegistry([instance(i) for i in range(1000)])
    cache = DiscoveryCache(registry, tmp_path)  # type: ignore[arg-type]
    await cache.instances("s")
    calls: list[tuple[float, InstanceList]] = []
    cache.subscribe("s", lambda service, found: calls.append((time.monotonic(), found)))
    await asyncio.sleep(COALESCE)
    # 200 re-registrations in 0.2 s: instances restarting with new ids.
    started = time.monotonic()
    for n in range(200):
        await registry.updates.put(Changes(put=[instance(5000 + n)], deleted=[f"i{n:06d}"]))
        if n % 20 == 19:
            await asyncio.sleep(0.02)
    await until(lambda: calls and len(calls[-1][1]) == 1000 and "i005199" in
                {i.id for i in calls[-1][1][-5:]}, what="the last change")
    elapsed = calls[-1][0] - started
    # At most one notification per COALESCE (and the first at once), each with all it missed.
    assert len(calls) <= elapsed / COALESCE + 2, (len(calls), elapsed)
    added = [i.id for _, found in calls for i in found.changes.added]
    removed = [i.id for _, found in calls for i in found.changes.removed]
    assert sorted(added) == [f"i{5000 + n:06d}" for n in range(200)]
    assert sorted(removed) == [f"i{n:06d}" for n in range(200)]
    # The snapshot follows within SNAPSHOT_INTERVAL, written by a thread, not the loop.
    snapshot = tmp_path / "s.json"
    await until(lambda: snapshot.exists() and "i005199" in snapshot.read_text(),
                SNAPSHOT_INTERVAL + 3, "the snapshot")
    assert writers and threading.get_ident() not in writers
    # Fewer writes than notifications: debounced.
    assert len(writers) <= 1 + (time.monotonic() - started) / SNAPSHOT_INTERVAL + 1, writers
    await cache.close()


async def test_the_client_touches_only_what_changed(tmp_path: Path) -> None:
    registry = QueueRegistry([instance(i) for i in range(10)])
    cache = DiscoveryCache(registry, tmp_path)  # type: ignore[arg-type]
    client = Client("s", discovery=cache)
    membership = client.membership
    membership.follow(cache, "s", await cache.instances("s"))
    client.ejections.eject("i000001")
    client.ejections.eject("i000002")
    version = cache.version("s")

    async def change(update: Changes) -> None:
        nonlocal version
        await asyncio.sleep(COALESCE)
        await registry.updates.put(update)
        await until(lambda: cache.version("s") != version, what="the change")
        version = cache.version("s")

    # Another instance's weight changes, one more registers: the dead stay kept away from.
    await change(Changes(put=[instance(4, weight=7), instance(10)]))
    assert client.ejections.current() == {"i000001", "i000002"}
    # One leaves and registers anew: it gets its chance again; one gone is forgotten.
    await change(Changes(deleted=["i000001"]))
    await change(Changes(put=[instance(1)]))
    assert client.ejections.current() == {"i000002"}
    await change(Changes(deleted=["i000002"]))
    assert client.ejections.current() == frozenset()
    await cache.close()


def test_a_client_calls_a_bounded_subset_spread_over_the_fleet() -> None:
    fleet = [instance(i) for i in range(1000)]
    subsets = []
    for client in range(100):
        subset = Subset(25, f"client-{client}")
        subset.reset(fleet)
        members = subset.members(None)
        assert len(members) == 25 and [i.id for i in members] == sorted(i.id for i in members)
        assert subset.members(None) is members  # the same list until something changes
        subsets.append({i.id for i in members})
    assert len({frozenset(s) for s in subsets}) == 100
    # Every instance in 25 / 1000 of the subsets on average: 2.5 clients of 100, spread as
    # hashing spreads (binomially: 8 to 12 at most, about 8 % of instances in none, over
    # draws of 100 keys), not exactly as SRE's subsetting with coordinated client indices.
    load = collections.Counter(i for s in subsets for i in s)
    assert sum(load.values()) == 2500
    assert max(load.values()) <= 15, load.most_common(3)
    assert len(load) >= 850, len(load)
    # A member leaves: that subset changes by one, the next best; the others not at all.
    subset = Subset(25, "client-0")
    subset.reset(fleet)
    before = {i.id for i in subset.members(None)}
    gone = sorted(before)[3]
    subset.remove(gone)
    after = {i.id for i in subset.members(None)}
    assert len(after) == 25 and before - after == {gone} and len(after - before) == 1
    other = Subset(25, "client-1")
    other.reset(fleet)
    if gone not in {i.id for i in other.members(None)}:
        kept = {i.id for i in other.members(None)}
        other.remove(gone)
        assert {i.id for i in other.members(None)} == kept
    # Ejected members are replaced by the next best while they are out.
    ejected = frozenset(sorted(after)[:20])
    replaced = {i.id for i in subset.members(ejected)}
    assert len(replaced) == 25 and not replaced & ejected and len(replaced & after) == 5
    # All ejected: the best of them, rather than nothing to call.
    assert len(subset.members(frozenset(i.id for i in fleet))) == 25


async def test_three_live_servers_among_997_dead_entries(tmp_path: Path) -> None:
    """The issue's probe: 3 live instances among 1,000 registered, 500 calls a second with the
    default client. It measured 100 % errors for 20 s (the breaker open, its probes on dead
    instances); the client must be back under 1 % within seconds and stay there, holding
    channels to the live instances only."""
    from microframe.test import free_port

    from support.servers import ServerProcess

    servers = [ServerProcess(tmp_path, transport="grpc.aio") for _ in range(3)]
    try:
        for server in servers:
            server.wait_serving()
        live = [
            ServiceInstance(id=f"live-{n}", name="deadfleet", host="127.0.0.1", port=s.port)
            for n, s in enumerate(servers)
        ]
        dead_ports = [free_port() for _ in range(997)]  # nothing listens: refused at once
        dead = [
            ServiceInstance(id=f"dead-{n:04d}", name="deadfleet", host="127.0.0.1", port=port)
            for n, port in enumerate(dead_ports)
        ]
        registry = QueueRegistry([*dead, *live])
        registry.initial = [*dead, *live]
        cache = DiscoveryCache(registry, tmp_path / "cache")  # type: ignore[arg-type]
        client = GreeterClient("deadfleet", discovery=cache)
        outcomes: list[tuple[float, str]] = []

        async def one() -> None:
            try:
                await client.SayHello(hello_pb2.HelloRequest(name="x"))
                outcome = "OK"
            except Exception as err:  # noqa: BLE001 - counted below
                outcome = type(err).__name__
            outcomes.append((time.monotonic(), outcome))

        start = time.monotonic()
        tasks = []
        seconds = 6
        for n in range(500 * seconds):  # open loop: a call every 2 ms
            tasks.append(asyncio.create_task(one()))
            delay = start + (n + 1) * 0.002 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        per_second = collections.defaultdict(collections.Counter)
        for at, outcome in outcomes:
            per_second[int(at - start)][outcome] += 1
        table = {s: dict(c) for s, c in sorted(per_second.items())}
        pool = get_channel_pool()
        print("outcomes per second:", table, "channels opened:", pool.opened, "open:", pool.open)
        # Under 1 % from the third second on (the bench measures it from the second, on a
        # machine of its own: docs/performance.md).
        for second in range(3, seconds):
            counts = per_second[second]
            errors = sum(v for k, v in counts.items() if k != "OK")
            assert errors <= 0.01 * sum(counts.values()), table
        # The client's subset bounds what it holds, however many entries the service has:
        # the channels of the dead are closed as they are found out.
        assert pool.open <= 3 + 32 and pool.opened <= 3 + 32, (pool.open, pool.opened)
        assert len(client.client.membership._subset.members(None)) == 32  # type: ignore[union-attr]
        await cache.close()
    finally:
        for server in servers:
            server.kill()


async def test_the_breaker_does_not_count_instances_that_could_not_be_reached() -> None:
    from microframe.client.breaker import CircuitBreakerMiddleware
    from microframe.client.call import ClientCall
    from microframe.client.options import ClientOptions
    from microframe.client.outliers import Ejections, InstanceUnreachable
    from microframe.core.router import RpcKind

    async def refused(call: ClientCall) -> None:
        raise InstanceUnreachable("cannot connect")

    ejections = Ejections()
    options = ClientOptions.resolve("fleet-breaker")
    step = CircuitBreakerMiddleware(
        refused, service="fleet-breaker", method="/a.B/C", options=options, ejections=ejections
    )
    instances = [instance(i) for i in range(5)]

    async def call_once() -> None:
        call = ClientCall("fleet-breaker", "/a.B/C", RpcKind.UNARY_UNARY, None, None, 1, [])
        call.instances = instances
        with pytest.raises(InstanceUnreachable):
            await step(call)

    # Dead entries being found out while others are not ejected: nothing says the service is
    # down, the circuit stays closed however many there are.
    for i in range(4):
        ejections.eject(instances[i].id)
    for _ in range(100):
        await call_once()
    assert step.breaker.state == 0 and step.breaker.window.totals() == (0, 0)
    # Every instance ejected: the service is unreachable, and that counts.
    ejections.eject(instances[4].id)
    for _ in range(30):
        try:
            await call_once()
        except BaseException:  # noqa: BLE001 - the open circuit's own Unavailable
            pass
    assert step.breaker.state == 1


async def test_a_new_weight_or_a_new_id_at_the_same_address_keeps_the_channel() -> None:
    from microframe.client.balancers import P2CEwmaBalancer
    from microframe.client.membership import Membership
    from microframe.client.outliers import Ejections

    released: list[str] = []
    balancer = P2CEwmaBalancer()
    ejections = Ejections()
    membership = Membership(
        ejections=ejections, balancer=balancer, release=released.append, subset_size=0
    )
    a, b = instance(1), instance(2)
    membership.follow(object(), "s", [a, b])
    ejections.eject(a.id)
    balancer.done(a, balancer.start(a), True)
    # Registered again with a new weight: the same instance, its channel, ejection and
    # statistics kept.
    membership.changed("s", [instance(1, weight=7), b])
    assert released == [] and a.id in ejections.current() and a.id in balancer._stats
    # Restarted under a new id at the same address: the channel stays too.
    membership.changed("s", [ServiceInstance(id="new", name="s", host=a.host, port=a.port), b])
    assert released == []
    assert a.id not in ejections.current() and a.id not in balancer._stats
    # A call in flight to an instance gone does not bring its statistics back.
    token = balancer.start(b)
    membership.changed("s", [ServiceInstance(id="new", name="s", host=a.host, port=a.port)])
    assert released == [b.address]
    balancer.done(b, token, True)
    assert b.id not in balancer._stats


@pytest.mark.parametrize("size", [-1, True, "many", 2.5])
def test_a_subset_size_that_is_no_whole_number_is_refused(size: object) -> None:
    from microframe.client.options import ClientOptions
    from microframe.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="SUBSET_SIZE|Invalid client options"):
        ClientOptions.resolve("fleet-options", subset_size=size)


async def test_subset_size_zero_calls_every_instance() -> None:
    fleet = [instance(i) for i in range(100)]
    client = Client("s", address=[i.address for i in fleet], subset_size=0)
    instances = await client._discovery.instances("s")
    client.membership.follow(client._discovery, "s", instances)
    assert client.membership.view(instances) is instances
    sized = Client("s", address=[i.address for i in fleet])
    sized.membership.follow(sized._discovery, "s", instances)
    assert len(sized.membership.view(instances)) == 32
