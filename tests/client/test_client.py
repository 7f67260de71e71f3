"""The client library against real service processes behind the file registry."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time

import pytest

from microframe.client import Client
from microframe.client.balancers import P2CEwmaBalancer, RoundRobinBalancer
from microframe.client.middleware import is_retryable
from microframe.client.outliers import RetryBudget
from microframe.contrib.registry import ServiceInstance
from microframe.contrib.registry.file import FileRegistry
from microframe.core.exceptions import DeadlineExceeded, NotFound, Unavailable
from microframe.discovery.cache import DiscoveryCache

from example.generate import hello_pb2
from example.generate.hello_client import GreeterClient

Req = hello_pb2.HelloRequest


def _cache(fleet) -> DiscoveryCache:
    return DiscoveryCache(
        FileRegistry(fleet.registry_dir, ttl=1.5), fleet.registry_dir.parent / "client-cache"
    )


async def _wait_instances(cache: DiscoveryCache, service: str, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while len(await cache.instances(service)) != count:
        assert asyncio.get_running_loop().time() < deadline, await cache.instances(service)
        await asyncio.sleep(0.05)


async def _call_loop(
    client: GreeterClient, results: collections.Counter[str], stop: asyncio.Event
) -> None:
    """Call until ``stop``; count the answers by outcome ("OK" or the exception's class)."""
    while not stop.is_set():
        try:
            await client.SayHello(Req(name="load"), timeout=2)
            results["OK"] += 1
        except Exception as err:  # noqa: BLE001 - counted, and the tests fail on them
            results[type(err).__name__] += 1


async def test_balancers_spread_calls_over_real_instances(fleet):
    servers = fleet("greeter", 3)
    pids = {str(s.proc.pid) for s in servers}
    cache = _cache(fleet)
    await _wait_instances(cache, "greeter", 3)
    for balancer in ("round_robin", "random", "p2c_ewma"):
        client = GreeterClient("greeter", balancer=balancer, discovery=cache)
        seen = collections.Counter(
            [(await client.SayHello(Req(name="pid"))).message for _ in range(300)]
        )
        assert set(seen) == pids, (balancer, seen)
        if balancer == "round_robin":
            assert set(seen.values()) == {100}, seen
        elif balancer == "random":
            assert min(seen.values()) > 50, (balancer, seen)
    await cache.close()


async def test_weighted_random_follows_weights(fleet):
    heavy = fleet("weighted", 1, weight=300)[0]
    light = fleet("weighted", 2)
    cache = _cache(fleet)
    await _wait_instances(cache, "weighted", 3)
    client = GreeterClient("weighted", balancer="weighted_random", discovery=cache)
    seen = collections.Counter(
        [(await client.SayHello(Req(name="pid"))).message for _ in range(1000)]
    )
    share = seen[str(heavy.proc.pid)] / 1000
    assert 0.5 < share < 0.7, seen  # 300 / (300 + 100 + 100) = 0.6
    assert all(seen[str(s.proc.pid)] > 100 for s in light), seen
    await cache.close()


async def test_killed_instance_under_load_costs_only_the_calls_it_held(fleet):
    servers = fleet("steady", 3)
    cache = _cache(fleet)
    await _wait_instances(cache, "steady", 3)
    client = GreeterClient("steady", balancer="round_robin", discovery=cache)
    results: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_call_loop(client, results, stop)) for _ in range(8)]
    await asyncio.sleep(0.5)
    servers[0].proc.kill()
    await asyncio.sleep(2.5)  # the killed instance leaves discovery meanwhile
    stop.set()
    await asyncio.gather(*tasks)
    total = sum(results.values())
    # Only the calls in flight on the killed instance (8 callers: at most 8) fail, with a clear
    # UNAVAILABLE: they may have run, so they are not sent again (is_retryable, rule 4).
    assert total > 500 and results["OK"] >= total - 8, results
    assert set(results) <= {"OK", "Unavailable"}, results
    assert [i.port for i in await cache.instances("steady")] == sorted(s.port for s in servers[1:])
    await cache.close()


async def test_deadline_propagates_down_a_chain(fleet):
    fleet("alpha")
    fleet("beta")
    fleet("gamma")
    cache = _cache(fleet)
    for name in ("alpha", "beta", "gamma"):
        await _wait_instances(cache, name, 1)
    client = GreeterClient("alpha", discovery=cache)
    # alpha -> beta -> gamma: gamma sees what is left of the deadline the test gave alpha.
    reply = await client.SayHello(Req(name="relay:beta,gamma"), timeout=1.5)
    # The reply is rounded to milliseconds: two fast hops leave 1.4996 s, answered "1.500".
    assert 0.5 < float(reply.message) <= 1.5
    # alpha spends its whole deadline before calling on: the chain stops there.
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await client.SayHello(Req(name="relay:beta,gamma", delay_ms=600), timeout=0.5)
    assert time.monotonic() - started < 1.0
    await cache.close()


async def test_one_connection_per_instance_and_errors_keep_their_code(fleet):
    servers = fleet("pooled", 2)
    cache = _cache(fleet)
    await _wait_instances(cache, "pooled", 2)
    clients = [GreeterClient("pooled", balancer="round_robin", discovery=cache) for _ in range(3)]
    peers = collections.defaultdict(set)
    replies = await asyncio.gather(
        *[c.SayHello(Req(name="peer")) for c in clients for _ in range(50)]
    )
    for reply in replies:
        pid, peer = reply.message.split(" ", 1)
        peers[pid].add(peer)
    # Every client of the loop shares one connection per instance.
    assert {pid: len(p) for pid, p in peers.items()} == {str(s.proc.pid): 1 for s in servers}
    with pytest.raises(NotFound) as info:
        await clients[0].SayHello(Req(name="notfound"))
    assert ("x-reason", "missing") in info.value.trailers
    with pytest.raises(Unavailable, match="nobody"):
        await Client("nobody", discovery=cache, timeout=0.5).unary(
            "/helloworld.Greeter/SayHello", Req(name="x"), hello_pb2.HelloReply
        )
    await cache.close()


async def test_streaming_methods(fleet):
    fleet("streams")
    cache = _cache(fleet)
    await _wait_instances(cache, "streams", 1)
    client = GreeterClient("streams", discovery=cache)
    replies = [r.message async for r in client.LotsOfReplies(Req(name="s", count=3))]
    assert len(replies) == 3
    total = await client.LotsOfGreetings([Req(name="a"), Req(name="b")])
    assert "a" in total.message and "b" in total.message
    echoed = [r.message async for r in client.BidiHello([Req(name="x"), Req(name="y")])]
    assert len(echoed) == 2
    await cache.close()


# -- pieces, against a controllable clock ------------------------------------------------------


def test_retry_budget_caps_retries():
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_second=0, window=10, clock=lambda: now[0])
    for _ in range(100):
        budget.record_call()
    assert sum(budget.try_retry() for _ in range(50)) == 10
    now[0] = 11  # the window moved on: no recent calls, no retries
    assert not budget.try_retry()


def test_retry_budget_forgets_old_calls_without_retries():
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_second=0, window=10, clock=lambda: now[0])
    for n in range(10_000):  # calls that never fail, 100 a second: no retry is asked for
        now[0] = n / 100
        budget.record_call()
    assert len(budget._calls) <= 1001  # the last 10 s only
    assert sum(budget.try_retry() for _ in range(200)) == 100


def test_retryable_only_when_no_handler_answered():
    import grpc

    assert is_retryable(Unavailable("connection refused"), frozenset())
    handled = Unavailable("busy", trailers={"x-microframe-handled": "1"})
    assert not is_retryable(handled, frozenset())
    assert not is_retryable(NotFound("x"), frozenset())
    # Lost with its connection mid-call: it may have run. A refused stream never did.
    assert not is_retryable(Unavailable("Stream removed (Socket closed)"), frozenset())
    refused = "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"
    assert is_retryable(Unavailable(refused), frozenset())
    never_connected = "failed to connect to all addresses; last error: Connection refused"
    assert is_retryable(Unavailable(never_connected), frozenset())
    assert is_retryable(Unavailable("failed to connect to all addresses; last error: UNAVAILABLE: "
                                    "ipv4:10.0.0.7:50051: Socket closed"), frozenset())
    assert is_retryable(NotFound("x"), frozenset({grpc.StatusCode.NOT_FOUND}))


def test_p2c_prefers_the_fast_instance_and_still_probes_the_slow_one():
    now = [0.0]
    balancer = P2CEwmaBalancer(clock=lambda: now[0], force_pick=1.0)
    fast = ServiceInstance(id="fast", name="s", host="h", port=1)
    slow = ServiceInstance(id="slow", name="s", host="h", port=2)
    picks = collections.Counter()
    for _ in range(2000):
        chosen = balancer.pick([fast, slow])
        assert chosen is not None
        picks[chosen.id] += 1
        token = balancer.start(chosen)
        now[0] += 0.05 if chosen is slow else 0.002
        balancer.done(chosen, token, ok=True)
    assert picks["fast"] > 4 * picks["slow"] > 0, picks
    # A retry avoids the instance that failed this call.
    assert RoundRobinBalancer().pick([fast, slow], frozenset({"fast"})) is slow


def test_sigterm_under_client_load_costs_no_call(fleet):
    """A stopping instance deregisters, then keeps serving for SHUTDOWN_DELAY while its
    clients move away, then closes its port: no call is lost. (Without the delay, a call
    sent in the instant the port closes is reset by grpc core: see docs/topics/server.md.)"""
    servers = fleet("rolling", 2, shutdown_delay=0.5)

    async def run() -> collections.Counter[str]:
        cache = _cache(fleet)
        await _wait_instances(cache, "rolling", 2)
        client = GreeterClient("rolling", discovery=cache)
        results: collections.Counter[str] = collections.Counter()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_call_loop(client, results, stop)) for _ in range(4)]
        await asyncio.sleep(0.3)
        servers[0].proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.2)
        stop.set()
        await asyncio.gather(*tasks)
        await cache.close()
        return results

    results = asyncio.run(run())
    assert set(results) == {"OK"}, results
    assert servers[0].proc.wait(10) == 0


# -- the circuit breaker -----------------------------------------------------------------------


def _breaker(mode: str = "hystrix", **options: object):
    from microframe.client.breaker import CircuitBreaker, breaker_options

    now = [0.0]
    config = breaker_options({
        "MODE": mode, "WINDOW": 10, "BUCKETS": 10, "REQUEST_VOLUME_THRESHOLD": 20,
        "ERROR_PERCENT_THRESHOLD": 50, "SLEEP_WINDOW": 5, "HALF_OPEN_PROBES": 3, **options,
    })
    import random as _random

    breaker = CircuitBreaker(
        (f"svc-{mode}-{id(now)}", "/x.Y/Z"), config, clock=lambda: now[0], rng=_random.Random(7)
    )
    return breaker, now


def _calls(breaker, outcomes) -> list[bool]:
    allowed = []
    for ok in outcomes:
        if breaker.allow():
            breaker.done(ok)
            allowed.append(True)
        else:
            allowed.append(False)
    return allowed


def test_hystrix_breaker_opens_half_opens_and_closes():
    from microframe.client.breaker import CLOSED, HALF_OPEN, OPEN

    breaker, now = _breaker()
    assert all(_calls(breaker, [False] * 19))  # under the volume threshold: stays closed
    assert breaker.state == CLOSED
    assert _calls(breaker, [False]) == [True] and breaker.state == OPEN
    assert _calls(breaker, [True] * 5) == [False] * 5  # fails fast
    now[0] += 5.1  # the sleep window passed: one probe at a time
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # a second call while the probe is in flight
    breaker.done(False)  # the probe failed: open for another window
    assert breaker.state == OPEN and not breaker.allow()
    now[0] += 5.1
    assert _calls(breaker, [True, True, True]) == [True] * 3
    assert breaker.state == CLOSED
    assert all(_calls(breaker, [True] * 10))


def test_sre_breaker_sheds_a_share_and_recovers():
    breaker, now = _breaker("sre")
    outcome = _calls(breaker, [False] * 400)
    refused = outcome.count(False)
    assert 100 < refused < 400, refused  # sheds a growing share, still lets some through
    now[0] += 11  # the failures left the window
    assert all(_calls(breaker, [True] * 50))


async def test_breaker_trips_on_an_unhealthy_backend_never_on_business_errors(fleet):
    servers = fleet("fragile")
    cache = _cache(fleet)
    await _wait_instances(cache, "fragile", 1)
    options = {"REQUEST_VOLUME_THRESHOLD": 10, "ERROR_PERCENT_THRESHOLD": 50, "SLEEP_WINDOW": 0.5,
               "HALF_OPEN_PROBES": 2, "WINDOW": 5}
    client = GreeterClient("fragile", discovery=cache, breaker=options)
    from prometheus_client import REGISTRY

    def state() -> float | None:
        return REGISTRY.get_sample_value(
            "microframe_client_circuit_state",
            {"service": "fragile", "method": "/helloworld.Greeter/SayHello"},
        )

    for _ in range(30):  # business errors: a healthy backend's answers
        with pytest.raises(NotFound):
            await client.SayHello(Req(name="notfound"))
    assert state() == 0
    opened_after = None
    for n in range(60):  # an unhealthy backend: opens once half of the window failed
        with pytest.raises(Unavailable) as info:
            await client.SayHello(Req(name="unavailable"))
        if "circuit open" in info.value.message:
            opened_after = n
            break
    assert opened_after == 30, opened_after  # 30 failures of 60 calls: 50 %
    assert state() == 1
    # Open: the next calls fail at once, without reaching the server.
    before = servers[0].metrics_text().count("\n")
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(Unavailable, match="circuit open"):
            await client.SayHello(Req(name="fine"))
    assert time.monotonic() - started < 0.2
    handled = _handled(servers[0].metrics_text(), "OK")
    await asyncio.sleep(0.6)  # the sleep window: probes go through and close the circuit
    assert (await client.SayHello(Req(name="fine"))).message == "Hello, fine!"
    assert (await client.SayHello(Req(name="fine"))).message == "Hello, fine!"
    assert all([(await client.SayHello(Req(name="x"))).message for _ in range(5)])
    assert _handled(servers[0].metrics_text(), "OK") == handled + 7
    assert before > 0
    await cache.close()


def _handled(text: str, code: str) -> float:
    import re

    return sum(
        float(m.group(1))
        for m in re.finditer(
            rf'^grpc_server_handled_total{{[^}}]*grpc_code="{code}"'
            rf'[^}}]*grpc_method="SayHello"[^}}]*}} (\S+)$',
            text,
            re.M,
        )
    )


def test_blocking_facade_from_many_threads(fleet):
    from concurrent.futures import ThreadPoolExecutor

    from microframe.client.blocking import blocking, shutdown

    fleet("sync", 2)
    cache = _cache(fleet)
    sync_cache = blocking(cache)
    deadline = time.monotonic() + 10
    while len(sync_cache.instances("sync")) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    greeter = blocking(GreeterClient("sync", discovery=cache, balancer="round_robin"))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: greeter.SayHello(Req(name=f"t{i}")).message, range(200)))
    assert replies == [f"Hello, t{i}!" for i in range(200)]
    assert len(list(greeter.LotsOfReplies(Req(name="s", count=3)))) == 3
    with pytest.raises(NotFound):
        greeter.SayHello(Req(name="notfound"))
    sync_cache.close()
    shutdown()  # no event loop of this test outlives it


async def test_access_log_line_names_the_instance_and_the_tries(fleet, caplog):
    import logging

    servers = fleet("logged", 1)
    cache = _cache(fleet)
    await _wait_instances(cache, "logged", 1)
    client = GreeterClient("logged", discovery=cache)
    logger = logging.getLogger("microframe.client.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="microframe.client.access"):
            await client.SayHello(Req(name="a"))
            with pytest.raises(NotFound):
                await client.SayHello(Req(name="notfound"))
    finally:
        logger.setLevel(old)
    lines = [r.getMessage() for r in caplog.records if r.name == "microframe.client.access"]
    address = f"127.0.0.1:{servers[0].port}"
    assert lines[0].startswith("logged/helloworld.Greeter/SayHello OK ")
    assert f"instance={address}" in lines[0]
    assert f"tried=127.0.0.1:{servers[0].port}" in lines[0] and "attempts=1" in lines[0]
    assert " NOT_FOUND " in lines[1]
    await cache.close()


async def test_retry_budget_caps_retries_when_every_instance_fails():
    from prometheus_client import REGISTRY

    from microframe.contrib.registry.static import StaticRegistry
    from microframe.test.ports import free_port

    # Three registered instances whose ports refuse connections: every attempt fails before a
    # handler, so every failure is retryable; only the budget holds retries back.
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    cache = DiscoveryCache(StaticRegistry(services={"gone": dead}), None)
    client = GreeterClient(
        "gone", discovery=cache,
        retry={"BUDGET_RATIO": 0.1, "BUDGET_MIN_PER_SECOND": 0, "BACKOFF": 0.0, "MAX_ATTEMPTS": 3},
        breaker={"ENABLED": False},
    )
    labels = {"service": "gone", "method": "/helloworld.Greeter/SayHello"}
    for _ in range(300):
        with pytest.raises(Unavailable):
            await client.SayHello(Req(name="x"), timeout=1)
    retries = REGISTRY.get_sample_value("microframe_client_retries_total", labels)
    refused = REGISTRY.get_sample_value("microframe_client_retries_refused_total", labels)
    assert retries == 30, (retries, refused)  # 10 % of 300 calls
    assert refused is not None and refused >= 270  # every other call failed without a retry
    await cache.close()


async def test_channels_close_when_instances_leave_discovery(fleet):
    from microframe.client.channels import get_channel_pool

    servers = fleet("leaving", 2)
    cache = _cache(fleet)
    await _wait_instances(cache, "leaving", 2)
    client = GreeterClient("leaving", balancer="round_robin", discovery=cache)
    for _ in range(4):
        await client.SayHello(Req(name="x"))
    pool = get_channel_pool()
    addresses = {key[0] for key in pool._channels}
    assert {f"127.0.0.1:{s.port}" for s in servers} <= addresses
    servers[0].proc.send_signal(signal.SIGTERM)
    await _wait_instances(cache, "leaving", 1)
    await asyncio.sleep(0.05)
    assert f"127.0.0.1:{servers[0].port}" not in {key[0] for key in pool._channels}
    assert (await client.SayHello(Req(name="y"))).message == "Hello, y!"
    await cache.close()


async def test_a_hung_instance_trips_the_breaker(fleet, transport):
    from microframe.core.exceptions import DeadlineExceeded

    name = f"hung_{transport.replace('.', '_')}"  # this process's breakers: per service
    server = fleet(name, 1)[0]
    cache = _cache(fleet)
    await _wait_instances(cache, name, 1)
    client = GreeterClient(
        name, discovery=cache, breaker={"REQUEST_VOLUME_THRESHOLD": 5, "SLEEP_WINDOW": 30}
    )
    await client.SayHello(Req(name="x"))
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        outcomes = []
        for _ in range(8):
            try:
                await client.SayHello(Req(name="x"), timeout=0.2)
            except DeadlineExceeded:
                outcomes.append("deadline")
            except Unavailable as err:
                outcomes.append("open" if "circuit open" in err.message else "unavailable")
        # 1 success + 4 deadlines reach the volume (5) at 80 % failed: open from then on.
        assert outcomes[:4] == ["deadline"] * 4 and set(outcomes[4:]) == {"open"}, outcomes
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    await cache.close()


@pytest.mark.parametrize(
    ("clients", "middleware", "check_id", "text"),
    [
        ({"orders": {"TIMEUOT": 1}}, None, "client.E001", "TIMEUOT"),
        ({"orders": {"BALANCER": "fastest"}}, None, "client.E001", "fastest"),
        ({"orders": {"BREAKER": {"MODE": "netflix"}}}, None, "client.E001", "netflix"),
        ({"orders": {"TIMEOUT": 0}}, None, "client.E001", "positive"),
        ({"orders": "fast"}, None, "client.E001", "dict"),
        ({"orders": {"METHOD_TIMEOUTS": {"Get": 0}}}, None, "client.E004", "positive number"),
        ({"orders": {"METHOD_TIMEOUTS": {"Get": "1s"}}}, None, "client.E004", "not '1s'"),
        ({"orders": {"METHOD_TIMEOUTS": {"/orders/Get/": 1}}}, None, "client.E004",
         "'/orders/Get/' is not a method name"),
        ({"orders": {"METHOD_TIMEOUTS": ["Get"]}}, None, "client.E004", "must be a dict"),
        ({}, ["microframe.client.middleware.Nope"], "client.E002", "Nope"),
        (
            {},
            ["microframe.client.middleware.BalancerMiddleware",
             "microframe.client.middleware.RetryMiddleware"],
            "client.E003",
            "BalancerMiddleware before RetryMiddleware",
        ),
    ],
)
def test_client_checks(clients, middleware, check_id, text):
    from microframe.core.checks import run_checks
    from microframe.test.utils import override_settings

    overrides = {"CLIENTS": clients}
    if middleware is not None:
        overrides["CLIENT_MIDDLEWARE"] = middleware
    with override_settings(**overrides):
        found = run_checks(tags=["client"])
    messages = [m for m in found if m.id == check_id]
    assert messages and text in messages[0].msg, messages
    assert len(found) == 1, found  # said once, under its own id


def test_sound_method_timeouts_pass_the_checks():
    from microframe.core.checks import run_checks
    from microframe.test.utils import override_settings

    table = {"Get": 0.2, "/orders.Orders/List": 1.5, "orders.v1.Orders/Put": 3}
    with override_settings(CLIENTS={"orders": {"METHOD_TIMEOUTS": table}}):
        assert run_checks(tags=["client"]) == []


async def test_method_timeouts_replace_the_timeout_of_their_methods(test_server):
    """A method's METHOD_TIMEOUTS entry (by name or by full name) is its calls' timeout; the
    other methods keep TIMEOUT, and a call's own timeout= still wins."""
    from microframe.test.utils import override_settings

    clients = {"slowpoke": {"TIMEOUT": 2.0, "METHOD_TIMEOUTS": {
        "SayHello": 0.2, "/helloworld.Greeter/LotsOfGreetings": 0.2,
    }}}
    with override_settings(CLIENTS=clients):  # a client follows CLIENTS while it changes
        client = GreeterClient("slowpoke", address=test_server.address)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.SayHello(Req(delay_ms=1500))
        assert 0.2 <= time.monotonic() - started < 0.9

        async def slowly():
            yield Req(name="a")
            await asyncio.sleep(1.5)
            yield Req(name="b")

        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.LotsOfGreetings(slowly())
        assert 0.2 <= time.monotonic() - started < 0.9
        # 0.5 s: past the others' 0.2 s, within TIMEOUT.
        replies = [r.message async for r in client.LotsOfReplies(Req(count=1, delay_ms=500))]
        assert len(replies) == 1
        reply = await client.SayHello(Req(name="x", delay_ms=500), timeout=2)
        assert reply.message == "Hello, x!"


async def test_connect_timeout_moves_on_from_an_unreachable_instance(fleet):
    import socket as socketlib

    from microframe.contrib.registry.static import StaticRegistry

    good = fleet("reach", 1)[0]
    # A port that completes TCP handshakes (the kernel's backlog) but never speaks HTTP/2.
    silent = socketlib.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        addresses = [f"127.0.0.1:{silent.getsockname()[1]}", good.address]
        cache = DiscoveryCache(StaticRegistry(services={"reach": addresses}), None)
        client = GreeterClient(
            "reach", discovery=cache, balancer="round_robin", connect_timeout=0.3
        )
        for n in range(4):
            started = time.monotonic()
            assert (await client.SayHello(Req(name=f"n{n}"), timeout=5)).message == f"Hello, n{n}!"
            assert time.monotonic() - started < 1.5
        await cache.close()
    finally:
        silent.close()


async def test_tls_and_mutual_tls(fleet, tmp_path, transport):
    if not os.environ.get("CI"):  # under CI the dev extra installs it: a failed import fails
        pytest.importorskip("cryptography")
    from support.etcd_cluster import generate_tls

    pki = generate_tls(tmp_path / "pki")
    tls = {"CERT": str(pki.server_cert), "KEY": str(pki.server_key), "CLIENT_CA": str(pki.ca)}
    if transport == "native":  # plaintext only: it refuses to start, and says why
        with pytest.raises(AssertionError, match="the native transport serves plaintext only"):
            fleet("secure", 1, tls=tls)
        return
    fleet("secure", 1, tls=tls)
    cache = _cache(fleet)
    await _wait_instances(cache, "secure", 1)
    good = {"CA": str(pki.ca), "CERT": str(pki.client_cert), "KEY": str(pki.client_key)}
    client = GreeterClient("secure", discovery=cache, tls=good)
    assert (await client.SayHello(Req(name="tls"))).message == "Hello, tls!"
    refused = [
        None,  # plaintext to a TLS port
        {"CA": str(pki.ca)},  # no client certificate under mTLS
        # a wrong CA
        {"CA": str(pki.other_ca), "CERT": str(pki.client_cert), "KEY": str(pki.client_key)},
    ]
    for tls in refused:
        other = GreeterClient("secure", discovery=cache, tls=tls, retry={"MAX_ATTEMPTS": 1},
                              breaker={"ENABLED": False}, connect_timeout=0.5)
        with pytest.raises(Unavailable):
            await other.SayHello(Req(name="x"), timeout=2)
    await cache.close()


class _Recorder:
    """A user-written step in the contract's first form (no ``**kwargs``): it sees each call
    after the steps inside it are done with it."""

    seen: list[tuple[list[str], int, str]] = []

    def __init__(self, next, *, client, method, kind):
        self.next = next
        self.client = client

    async def __call__(self, call):
        try:
            return await self.next(call)
        finally:
            self.seen.append((list(call.tried), call.attempt, call.instance.address))


async def test_each_attempt_picks_an_instance_of_its_own(fleet):
    from microframe.client.client import DEFAULT_CLIENT_MIDDLEWARE
    from microframe.test import free_port

    good = fleet("tries", 1)[0]
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    _Recorder.seen = []
    client = Client(
        "tries", address=[*dead, good.address], balancer="round_robin",
        middleware=[_Recorder, *DEFAULT_CLIENT_MIDDLEWARE], breaker={"ENABLED": False},
        retry={"MAX_ATTEMPTS": 3, "BACKOFF": 0.0},
    )
    for n in range(6):
        reply = await client.unary(
            "/helloworld.Greeter/SayHello", Req(name=f"n{n}"), hello_pb2.HelloReply, timeout=5
        )
        assert reply.message == f"Hello, n{n}!"
    for tried, attempt, answered in _Recorder.seen:
        # Never the same instance twice in one call; the last one tried is the one that answered.
        # A refused connection is no attempt (nothing was sent): another instance is picked
        # at once, within the first.
        assert len(set(tried)) == len(tried) and attempt == 1
        assert tried[-1] == answered == good.address
    # A dead instance refused once is kept away from: later calls go straight to the good one.
    assert max(len(tried) for tried, _, _ in _Recorder.seen) > 1
    assert [len(tried) for tried, _, _ in _Recorder.seen[-3:]] == [1, 1, 1]


def test_the_client_metrics_step_is_the_metrics_batterys_under_its_old_path_too() -> None:
    from microframe.conf import global_settings
    from microframe.contrib.metrics.middleware import ClientMetricsMiddleware
    from microframe.utils.module_loading import import_string

    path = "microframe.contrib.metrics.middleware.ClientMetricsMiddleware"
    assert path in global_settings.CLIENT_MIDDLEWARE
    assert import_string("microframe.client.middleware.MetricsMiddleware") is ClientMetricsMiddleware


async def test_a_server_stream_fails_over_before_its_first_reply(fleet):
    """A server stream whose instance refuses the connection is retried on another one, as a
    unary call is: the error comes before any reply, so no reply can have been seen twice."""
    import socket as socketlib

    from microframe.contrib.registry.static import StaticRegistry

    good = fleet("stream-over", 1)[0]
    closed = socketlib.socket()
    closed.bind(("127.0.0.1", 0))
    refusing = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: connections are refused
    cache = DiscoveryCache(StaticRegistry(services={"stream-over": [refusing, good.address]}), None)
    client = GreeterClient("stream-over", discovery=cache, balancer="round_robin")
    try:
        for n in range(4):
            replies = [
                r.message async for r in client.LotsOfReplies(Req(name=f"s{n}", count=2), timeout=5)
            ]
            assert len(replies) == 2, replies
    finally:
        await cache.close()
