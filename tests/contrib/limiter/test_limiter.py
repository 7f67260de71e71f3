"""Rate limiting: each algorithm against a clock the test drives, then real servers under load
(alone, sharing one limit in a real Redis, and riding out a Redis outage)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent import futures

import grpc
import pytest

from microframe.contrib.limiter.backends import (
    FixedWindowCounter,
    LeakyBucket,
    SlidingWindow,
    TokenBucket,
)
from microframe.core.exceptions import ResourceExhausted

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, service_settings
from support.polling import wait_until
from support.redis_server import RedisServer
from support.servers import ServerProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admitted_per_tick(limiter, clock: Clock, ticks: int, offered: int, tick: float = 0.01) -> list[int]:
    """Offer ``offered`` calls every ``tick`` seconds; count what is admitted each tick."""
    counts = []
    for _ in range(ticks):
        counts.append(sum(limiter.try_acquire() == 0.0 for _ in range(offered)))
        clock.advance(tick)
    return counts


# -- the algorithms, on a clock the test drives ------------------------------------------------


def test_token_bucket_bursts_then_keeps_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=20, clock=clock)
    counts = admitted_per_tick(bucket, clock, ticks=100, offered=10)  # 1000 calls/s offered, 1 s
    assert counts[0] == 10 and counts[1] == 10  # the burst: 20 at once
    assert sum(counts) == pytest.approx(20 + 99, abs=2)  # then 100/s
    assert bucket.try_acquire() == 0.0  # the token of the last tick
    wait = bucket.try_acquire()
    assert 0 < wait <= 0.01 + 1e-9  # the retry-after: one token's worth of time at most
    clock.advance(1.0)
    assert sum(bucket.try_acquire() == 0.0 for _ in range(50)) == 20  # refilled to the burst only


def test_retry_after_is_never_zero_and_never_early():
    from microframe.contrib.limiter.middleware import retry_after

    # A permit a microsecond away is no "retry now"; a wait is rounded up, never down.
    assert [retry_after(w) for w in (1e-6, 0.0004, 0.001, 0.0101, 2.5)] == [
        "0.001", "0.001", "0.001", "0.011", "2.500",
    ]


def test_token_bucket_reserves_waits_in_order():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    assert bucket._reserve(1, 1.0) == 0.0
    assert bucket._reserve(1, 1.0) == pytest.approx(0.1)
    assert bucket._reserve(1, 1.0) == pytest.approx(0.2)  # behind the first waiter
    assert bucket._reserve(1, 0.25) == pytest.approx(-0.3)  # beyond max_wait: refused, nothing taken
    assert bucket._reserve(1, 1.0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        TokenBucket(rate=-1)


def test_leaky_bucket_lets_one_through_per_interval():
    clock = Clock()
    bucket = LeakyBucket(rate=100, capacity=5, clock=clock)
    counts = admitted_per_tick(bucket, clock, ticks=100, offered=10)
    assert counts[0] == 1 and max(counts) == 1  # no burst, ever
    assert sum(counts) == pytest.approx(100, abs=1)
    # Wait mode: up to `capacity` calls queue, each a slot after the previous one.
    clock.advance(1.0)
    waits = [bucket._reserve(1, 10.0) for _ in range(8)]
    assert waits[:6] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    assert all(w < 0 for w in waits[6:])  # the queue is full


def test_fixed_window_counter_and_its_edge():
    clock = Clock()
    counter = FixedWindowCounter(limit=50, window=1.0, clock=clock)
    counts = admitted_per_tick(counter, clock, ticks=300, offered=10)  # 3 windows
    assert sum(counts) == 150
    # The edge: 50 at the very end of one window and 50 at the start of the next.
    clock.now = 2000.99
    edge = sum(counter.try_acquire() == 0.0 for _ in range(100))
    clock.advance(0.02)
    edge += sum(counter.try_acquire() == 0.0 for _ in range(100))
    assert edge == 100  # twice the limit within 20 ms: the documented weakness
    assert counter.try_acquire() == pytest.approx(0.99, abs=0.01)  # until the next window


def test_sliding_window_has_no_edge_burst():
    clock = Clock()
    window = SlidingWindow(limit=50, window=1.0, clock=clock)
    clock.now = 2000.0
    admitted_per_tick(window, clock, ticks=99, offered=10)  # fill the window up to 1999.99 + ...
    clock.now = 2000.99
    first = sum(window.try_acquire() == 0.0 for _ in range(100))
    clock.advance(0.02)
    second = sum(window.try_acquire() == 0.0 for _ in range(100))
    assert first + second <= 52  # the previous window still counts: no doubled burst
    counts = admitted_per_tick(window, clock, ticks=300, offered=10)
    assert sum(counts) == pytest.approx(150, rel=0.05)


async def test_acquire_waits_for_its_turn_on_the_real_clock():
    bucket = TokenBucket(rate=20, burst=1)
    start = time.monotonic()
    waits = await asyncio.gather(*(bucket.acquire(1, 2.0) for _ in range(5)))
    assert sorted(waits)[0] == 0.0 and sorted(waits)[-1] == pytest.approx(0.2, abs=0.02)
    assert 0.18 <= time.monotonic() - start < 0.5
    assert await bucket.acquire(1, 0.001) < 0  # would wait ~50 ms: refused at once


# -- real servers --------------------------------------------------------------------------------


@pytest.fixture
def limited(tmp_path, transport):
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    started: list[ServerProcess] = []

    def start(limiter: dict, name: str = "limited", **extra: object) -> ServerProcess:
        module = f"svc_limited_{len(started)}"
        settings = service_settings(tmp_path, module, name, {
            "BACKEND": "microframe.contrib.registry.file.FileRegistry",
            "OPTIONS": {"directory": str(tmp_path / "registry")},
            "CACHE_DIR": str(tmp_path / f"cache-{module}"),
        }, LIMITER=limiter, GRPC={"HOST": "127.0.0.1", "PORT": 0, "MAX_CONCURRENT_RPCS": 1000}, **extra)
        server = ServerProcess(tmp_path, settings=settings, env=env, transport=transport)
        started.append(server)
        return server.wait_serving()

    yield start
    for server in started:
        server.kill()


def hammer(address: str, seconds: float, threads: int = 8, metadata: tuple = (), name: str = "x") -> tuple[int, int, list]:
    """Call SayHello as fast as ``threads`` threads can for ``seconds``; count OK and
    RESOURCE_EXHAUSTED answers (any other answer fails the test)."""
    ok = exhausted = 0
    trailers: list = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        def worker() -> None:
            nonlocal ok, exhausted
            while time.monotonic() < deadline:
                try:
                    stub.SayHello(hello_pb2.HelloRequest(name=name), metadata=metadata, timeout=5)
                    with lock:
                        ok += 1
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    with lock:
                        exhausted += 1
                        if len(trailers) < 5:
                            trailers.append(dict(err.trailing_metadata() or ()))

        with futures.ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(worker) for _ in range(threads)]:
                f.result()
    return ok, exhausted, trailers


def sample(metrics: str, name: str, label: str = "") -> float:
    """The value of the one sample of ``name`` whose labels contain ``label``."""
    (line,) = [line for line in metrics.splitlines() if line.startswith(name) and label in line]
    return float(line.rsplit(" ", 1)[1])


def test_admitted_rate_through_a_real_server(limited):
    server = limited({"OPTIONS": {"rate": 100, "burst": 10}})
    ok, exhausted, trailers = hammer(server.address, 3.0)
    assert exhausted > ok  # the load really was over the limit
    assert (ok - 10) / 3.0 == pytest.approx(100, rel=0.05)
    retry_after = float(trailers[0]["retry-after"])
    assert 0 < retry_after <= 0.011
    metrics = server.metrics_text()
    assert sample(metrics, "microframe_limiter_allowed_total", 'grpc_method="SayHello"') == ok
    assert sample(metrics, "microframe_limiter_rejected_total", 'grpc_method="SayHello"') == exhausted


def test_exempt_method_and_per_tenant_keys(limited):
    server = limited({
        "OPTIONS": {"rate": 1, "burst": 2},
        "KEY": "metadata:x-tenant",
        "METHODS": {"/helloworld.Greeter/LotsOfReplies": None},
    })
    with grpc.insecure_channel(server.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        def say(tenant: str) -> str:
            try:
                stub.SayHello(hello_pb2.HelloRequest(name="x"), metadata=(("x-tenant", tenant),), timeout=5)
                return "ok"
            except grpc.RpcError as err:
                return err.code().name

        assert [say("a") for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]
        assert [say("b") for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]  # a limit of its own
        for _ in range(10):  # exempt: never limited
            assert len(list(stub.LotsOfReplies(hello_pb2.HelloRequest(name="x", count=1), timeout=5))) == 1


def test_wait_mode_queues_within_the_deadline(limited):
    server = limited({"OPTIONS": {"rate": 5, "burst": 1}, "MODE": "wait", "MAX_WAIT": 10.0})
    results: list[tuple[str, float]] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        def one() -> None:
            start = time.monotonic()
            try:
                stub.SayHello(hello_pb2.HelloRequest(name="x"), timeout=1.0)
                results.append(("OK", time.monotonic() - start))
            except grpc.RpcError as err:
                results.append((err.code().name, time.monotonic() - start))

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    answered = sorted(results, key=lambda r: r[1])
    ok = [r for r in answered if r[0] == "OK"]
    refused = [r for r in answered if r[0] == "RESOURCE_EXHAUSTED"]
    assert len(ok) + len(refused) == 10, answered  # no DEADLINE_EXCEEDED: never waited past it
    assert 4 <= len(ok) <= 6  # 1 at once, then one every 200 ms within the 1 s deadline
    assert max(t for _, t in ok) < 1.05  # answered within the deadline (as the client saw it)
    assert all(t < 0.5 for _, t in refused)  # refused at once, not after waiting in vain


def test_client_limit_qps_fails_fast_without_the_network(limited):
    from microframe.client import Client
    from microframe.contrib.registry.static import StaticRegistry
    from microframe.discovery.cache import DiscoveryCache

    server = limited({"ENABLED": False})

    async def run() -> list[str]:
        registry = StaticRegistry({"limited": [server.address]})
        client = Client("limited", discovery=DiscoveryCache(registry, None), limit_qps=5)
        outcomes = []
        for _ in range(12):
            try:
                await client.unary("/helloworld.Greeter/SayHello", hello_pb2.HelloRequest(name="x"), hello_pb2.HelloReply)
                outcomes.append("ok")
            except ResourceExhausted as err:
                assert "5 calls per second to limited" in err.message
                outcomes.append("limited")
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes.count("ok") == 5 and outcomes.count("limited") == 7
    assert sample(server.metrics_text(), "grpc_server_handled_total", 'grpc_code="OK",grpc_method="SayHello"') == 5


@pytest.mark.timeout(120)
def test_redis_shared_limit_outage_and_recovery(limited, tmp_path):
    redis = RedisServer(tmp_path / "redis")
    try:
        limiter = {
            "BACKEND": "microframe.contrib.limiter.redis.RedisLimiter",
            "OPTIONS": {"rate": 100, "burst": 10, "url": redis.url, "retry_interval": 0.5},
        }
        one, two = limited(limiter, name="shared"), limited(limiter, name="shared")

        def both(seconds: float) -> int:
            with futures.ThreadPoolExecutor(2) as pool:
                counts = [pool.submit(hammer, s.address, seconds, 6) for s in (one, two)]
                return sum(f.result()[0] for f in counts)

        def fallbacks() -> float:
            return sum(sample(s.metrics_text(), "microframe_limiter_redis_fallbacks_total")
                       for s in (one, two))

        def shared_run(seconds: float) -> int:
            """Calls admitted by both in ``seconds`` with Redis answering every call. A Redis
            call slower than the limiter's timeout (100 ms) falls back to the local bucket
            for ``retry_interval``, as it should, and admits more: on a loaded machine that
            happens now and then, and such a run measures the fallback, not the shared
            limit, so it is made again (three times at most)."""
            for _ in range(3):
                before = fallbacks()
                admitted = both(seconds)
                if fallbacks() == before:
                    return admitted
                print(f"a Redis call fell back during the run ({admitted} admitted): again")
                time.sleep(0.2)  # the bucket refills to its burst
            raise AssertionError("every run fell back to the local bucket")

        shared = shared_run(3.0)
        assert (shared - 10) / 3.0 == pytest.approx(100, rel=0.10)  # one limit for both

        redis.stop()  # an outage: both fall back to a local bucket each, and keep serving
        during = both(2.0)
        assert during > 2.0 * 100 * 1.5, during  # each enforces the limit alone now
        for server in (one, two):
            wait_until(lambda s=server: "Redis at" in s.output and "cannot be reached" in s.output, 5, "the warning")
            text = server.metrics_text()
            assert sample(text, "microframe_limiter_redis_up") == 0
            assert sample(text, "microframe_limiter_redis_fallbacks_total") > 0

        redis.start()  # back: shared limiting resumes (Redis is tried again every 0.5 s)
        for server in (one, two):
            def back(s: ServerProcess = server) -> bool:
                hammer(s.address, 0.2, 1)  # calls make the limiter try Redis again
                return "is back: the limit is shared again" in s.output

            wait_until(back, 10, "the limiter to use Redis again")
        time.sleep(0.2)  # the bucket refills to its burst (10 tokens at 100/s), as in the first phase
        again = shared_run(3.0)
        assert (again - 10) / 3.0 == pytest.approx(100, rel=0.15), again
        for server in (one, two):
            assert sample(server.metrics_text(), "microframe_limiter_redis_up") == 1
    finally:
        redis.stop()


# -- adaptive shedding -----------------------------------------------------------------------------


def test_bbr_rule_on_a_driven_clock(tmp_path):
    from microframe.contrib.limiter.shedding import BBR, cgroup_cores

    clock, cpu = Clock(), [0.9]
    bbr = BBR(window=1.0, buckets=10, cpu_threshold=0.8, cool_off=1.0, cpu=lambda: cpu[0], clock=clock)
    # 20 calls per 100 ms bucket, 10 ms each: the service holds 20 * 0.01 * 10 = 2 calls at once.
    for _ in range(10):
        for _ in range(20):
            bbr.record(0.010)
        clock.advance(0.1)
    assert bbr.max_inflight() == pytest.approx(2.0)
    bbr.inflight = 2
    assert not bbr.should_drop()
    bbr.inflight = 3
    assert bbr.should_drop()  # CPU high and more in flight than it holds
    cpu[0] = 0.5
    assert bbr.should_drop()  # within the cool-off after a drop
    clock.advance(1.1)
    assert not bbr.should_drop()  # CPU low, cool-off over: nothing is shed
    # The cgroup quota, v2 and v1.
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cores(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cores(tmp_path) is None


def shed_run(address: str, in_flight: int, seconds: float, settle: float = 0.0) -> tuple[int, int, float]:
    """``in_flight`` callers of burn:3 for ``seconds``: (OK, shed, p99 seconds of the OK ones
    started after the first ``settle`` seconds)."""
    latencies: list[float] = []
    shed = 0
    lock = threading.Lock()
    begin = time.monotonic()
    deadline = begin + seconds
    with grpc.insecure_channel(address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        def worker() -> None:
            nonlocal shed
            while time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    stub.SayHello(hello_pb2.HelloRequest(name="burn:3"), timeout=10)
                    if start - begin >= settle:
                        with lock:
                            latencies.append(time.monotonic() - start)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    assert "overloaded" in (err.details() or "")
                    with lock:
                        shed += 1
                    time.sleep(0.05)  # a shed caller backs off, as clients do

        with futures.ThreadPoolExecutor(in_flight) as pool:
            for f in [pool.submit(worker) for _ in range(in_flight)]:
                f.result()
    latencies.sort()
    return len(latencies), shed, latencies[int(len(latencies) * 0.99)] if latencies else 0.0


async def shed_load(address: str, in_flight: int, seconds: float, settle: float) -> tuple[int, int, float, float, int]:
    """``in_flight`` callers (asyncio tasks on one channel) of burnthread:3 for ``seconds``: the
    OK calls and the shed ones, and of the OK calls started after ``settle`` seconds, the p99
    latency the callers saw, the p99 time the server spent on them and the p99 of the calls each
    found in the controller (what they answer)."""
    seen: list[float] = []
    served: list[float] = []
    crowd: list[int] = []
    ok = shed = 0
    begin = time.monotonic()
    deadline = begin + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        async def caller() -> None:
            nonlocal ok, shed
            while time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    reply = await stub.SayHello(hello_pb2.HelloRequest(name="burnthread:3"), timeout=10)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    assert "overloaded" in (err.details() or "")
                    shed += 1
                    await asyncio.sleep(0.05)  # a shed caller backs off, as clients do
                    continue
                ok += 1
                if start - begin >= settle:
                    seen.append(time.monotonic() - start)
                    elapsed, found = reply.message.split()
                    served.append(float(elapsed))
                    crowd.append(int(found))

        await asyncio.gather(*(caller() for _ in range(in_flight)))
    seen.sort()
    served.sort()
    crowd.sort()
    return ok, shed, seen[int(len(seen) * 0.99)], served[int(len(served) * 0.99)], crowd[int(len(crowd) * 0.99)]


#: Callers of the overload: enough that, without the shedder, the calls accepted wait for a
#: worker thread for many times a call's own time, whatever else the machine runs meanwhile.
IN_FLIGHT = 48


@pytest.mark.timeout(120)
async def test_shedding_bounds_latency_under_overload(limited, transport):
    # The work is CPU in a worker thread (as CPU-bound work should run): the calls wait for the
    # thread inside the chain, where the shedder sees them. The threshold is lower than the
    # default 0.8 because the load generator shares this 2-core machine with the server.
    shedding = {"ENABLED": True, "CPU_THRESHOLD": 0.6, "WINDOW": 2.0, "BUCKETS": 20,
                "CPU_INTERVAL": 0.1, "CPU_DECAY": 0.5, "CORES": 1.0}
    shedder = limited({"ENABLED": False}, SHEDDING=shedding)
    plain = limited({"ENABLED": False})
    calm = await shed_load(shedder.address, 1, 2.0, 0.5)
    assert calm[1] == 0  # one caller: nothing shed
    plain_ok, plain_shed, plain_seen, plain_served, plain_crowd = await shed_load(plain.address, IN_FLIGHT, 5.0, 2.0)
    assert plain_shed == 0
    ok, shed, seen, served, crowd = await shed_load(shedder.address, IN_FLIGHT, 5.0, 2.0)
    report = {"calm": calm, "plain": (plain_ok, plain_seen, plain_served, plain_crowd),
              "shed": (ok, shed, seen, served, crowd)}
    assert shed > 0 and ok > 0.5 * plain_ok, report  # the excess shed, most of the capacity served
    # Without the shedder nearly every caller's call waits in the controller for the one CPU
    # thread; with it, the calls let in are the few the process serves in their own time. On
    # grpc.aio a p99 of 3-4 calls when the server has a core of its own (7-11 with client and
    # server pinned to one core, where the latency BBR measures, and so what it holds, is
    # higher), and the time the calls accepted spend in the server cut 7-8 x (4.4 x with the
    # other core busy, 2.9-4.2 x pinned to one core). The native transport lets more in at once
    # (8-15) and cuts that time 2.4-4 x: docs/topics/limiter.md, docs/topics/transport.md.
    crowd_bound, cut = (IN_FLIGHT // 4, 2.0) if transport == "grpc.aio" else (IN_FLIGHT // 2, 1.5)
    assert plain_crowd > IN_FLIGHT // 2 and crowd <= crowd_bound, report
    assert served * cut < plain_served, report
    # Their callers' tail is no longer than without shedding (what they wait for beyond the
    # chain is grpc's queue and the GIL the threads hold: docs/topics/limiter.md).
    assert seen <= plain_seen * 1.1, report
    assert sample(shedder.metrics_text(), "microframe_limiter_shed_total", 'grpc_method="SayHello"') == shed


def test_shedding_sheds_nothing_without_overload(limited):
    shedding = {"ENABLED": True, "WINDOW": 2.0, "BUCKETS": 20, "CPU_INTERVAL": 0.1, "CPU_DECAY": 0.5}
    server = limited({"ENABLED": False}, SHEDDING=shedding)
    ok, shed, _ = shed_run(server.address, in_flight=1, seconds=2.0)
    assert ok > 100 and shed == 0
    assert sample(server.metrics_text(), "microframe_limiter_shed_total", 'grpc_method="SayHello"') == 0
