"""The etcd registry against real etcd: one member, a 3-member cluster, outages, auth and TLS.

Keys are read back with ``etcdctl``; processes that register are real subprocesses killed by
signal. Every wait is a poll with a deadline; the only sleeps are the outages themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY as PROMETHEUS

from microframe.contrib.registry import (
    Registry,
    RegistryError,
    RegistryUnavailable,
    ServiceInstance,
    build_registry,
)
from microframe.core.exceptions import ImproperlyConfigured
from microframe.test.ports import free_port

from support.env import ROOT, base_env
from support.etcd_cluster import EtcdCluster, EtcdMember, generate_tls


def _require_module(name: str) -> None:
    """Fail under CI when ``name`` cannot be imported (the etcd extra installs it), else skip."""
    try:
        __import__(name)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name} is not installed (pip install -e '.[etcd]')", allow_module_level=True)


_require_module("aetcd")

from microframe.contrib.registry.etcd import EtcdRegistry  # noqa: E402

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
TTL = 2  # short leases, so that expiry is seen within the test's time
FAILOVER = 5  # seconds a killed member may disturb operations


# Fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
async def registries() -> AsyncIterator[Callable[..., EtcdRegistry]]:
    """Build registries that are closed at the end of the test."""
    made: list[EtcdRegistry] = []

    def make(**options: Any) -> EtcdRegistry:
        options.setdefault("ttl", TTL)
        registry = EtcdRegistry(**options)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


def instance(id: str, name: str = "orders", port: int = 7000, **kwargs: Any) -> ServiceInstance:
    return ServiceInstance(id=id, name=name, host="127.0.0.1", port=port, **kwargs)


async def poll(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Await ``check`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = await check()
        except (RegistryError, AssertionError) as err:
            last, value = err, None
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def _true(value: bool) -> bool:
    return value


async def keys(cluster: EtcdCluster, prefix: str) -> dict[str, Any]:
    """The keys under ``prefix`` as ``etcdctl get --prefix`` shows them (off the event loop)."""
    return await asyncio.to_thread(cluster.get_prefix, prefix + "/")


def metric(name: str, **labels: str) -> float:
    return PROMETHEUS.get_sample_value(f"microframe_registry_{name}_total", labels) or 0.0


class Follower:
    """Consume ``registry.watch(service)`` in a task, watching again after each break."""

    def __init__(self, registry: EtcdRegistry, service: str) -> None:
        self.latest: list[str] | None = None
        self.errors: list[RegistryUnavailable] = []
        self._task = asyncio.create_task(self._run(registry, service))

    async def _run(self, registry: EtcdRegistry, service: str) -> None:
        while True:
            try:
                async for found in registry.watch(service):
                    self.latest = [i.id for i in found]
            except RegistryUnavailable as err:
                self.errors.append(err)
                await asyncio.sleep(0.1)

    async def sees(self, ids: list[str], timeout: float = 5.0) -> None:
        async def check() -> bool:
            return self.latest == ids

        await poll(check, timeout, f"the watch to show {ids} (shows {self.latest})")

    async def stop(self) -> None:
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=10)
        assert done, "the watch task did not stop when cancelled"


# One member -----------------------------------------------------------------------------------


async def test_register_writes_key_value_and_lease(etcd, registries):
    registry = registries(endpoints=etcd.endpoints)  # default prefix, as DESIGN §6 specifies
    assert isinstance(registry, Registry)
    svc = f"orders{uuid.uuid4().hex[:6]}"
    inst = instance("orders-1", name=svc, weight=50, metadata={"zone": "a"}, version="1.2")
    started = time.monotonic()
    await registry.register(inst)

    found = await keys(etcd, f"/microframe/services/{svc}")
    key = f"/microframe/services/{svc}/orders-1"
    assert list(found) == [key]
    assert found[key].value == inst.to_json()
    value = json.loads(found[key].value)
    assert value["id"] == "orders-1" and value["name"] == svc
    assert value["address"] == "127.0.0.1:7000" and value["weight"] == 50
    assert value["metadata"] == {"zone": "a"}
    lease = found[key].lease
    granted, remaining = await asyncio.to_thread(etcd.lease_ttl, lease)
    assert granted == TTL and 0 < remaining <= TTL

    # Kept alive past its TTL: same key, same lease.
    await asyncio.sleep(max(0.0, started + TTL + 1 - time.monotonic()))
    assert (await keys(etcd, f"/microframe/services/{svc}"))[key].lease == lease

    # Registering again replaces the value, under the same lease.
    heavier = instance("orders-1", name=svc, weight=80)
    await registry.register(heavier)
    again = (await keys(etcd, f"/microframe/services/{svc}"))[key]
    assert again.value == heavier.to_json() and again.lease == lease
    assert await registry.instances(svc) == [heavier]


async def test_a_large_service_is_read_page_by_page_then_followed_change_by_change(
    etcd, registries, prefix, monkeypatch
):
    """The initial read comes in pages at one revision (a fleet past 270,000 instances was
    over the 64 MiB message cap in one), and each revision's events come as what changed."""
    from microframe.contrib.registry import etcd as etcd_module
    from microframe.discovery.registry import Changes

    monkeypatch.setattr(etcd_module, "PAGE_SIZE", 7)
    registrar = registries(endpoints=etcd.endpoints, prefix=prefix)
    client = registries(endpoints=etcd.endpoints, prefix=prefix)
    fleet = [instance(f"i{n:03d}", port=8000 + n) for n in range(40)]
    await asyncio.gather(*(registrar.register(i) for i in fleet))
    # A key deeper than an instance's, and one of another service sharing the first letters.
    await asyncio.to_thread(etcd.etcdctl, "put", f"{prefix}/orders/i001/extra", "{}")
    await registrar.register(instance("x", name="ordersbis"))
    assert await client.instances("orders") == fleet
    changes = client.watch_changes("orders")
    first = await asyncio.wait_for(anext(changes), 5)
    assert sorted(first, key=lambda i: i.id) == fleet  # type: ignore[arg-type]
    heavier = instance("i005", port=8005, weight=7)
    await registrar.register(heavier)
    update = await asyncio.wait_for(anext(changes), 5)
    assert update == Changes(put=(heavier,), deleted=())
    await registrar.deregister(fleet[9])
    update = await asyncio.wait_for(anext(changes), 5)
    assert update == Changes(put=(), deleted=("i009",))
    await changes.aclose()


async def test_register_watch_deregister_close(etcd, registries, prefix):
    registrar = registries(endpoints=etcd.endpoints, prefix=prefix)
    client = registries(endpoints=etcd.endpoints, prefix=prefix)
    a, b = instance("a", port=7001), instance("b", port=7002)
    before = metric("registrations", backend="etcd", service="orders")

    watch = client.watch("orders")
    assert await anext(watch) == []
    await registrar.register(a)
    assert await asyncio.wait_for(anext(watch), 5) == [a]
    await registrar.register(b)
    assert await asyncio.wait_for(anext(watch), 5) == [a, b]
    assert await client.instances("orders") == [a, b]
    assert await client.services() == ["orders"]
    assert metric("registrations", backend="etcd", service="orders") == before + 2

    await registrar.deregister(a)
    assert list(await keys(etcd, prefix)) == [f"{prefix}/orders/b"]  # gone at once
    assert await asyncio.wait_for(anext(watch), 5) == [b]
    assert await client.instances("orders") == [b]

    await registrar.close()  # revokes b's lease
    assert await keys(etcd, prefix) == {}
    assert await asyncio.wait_for(anext(watch), 5) == []
    assert await client.services() == []
    with pytest.raises(RegistryError):
        await registrar.register(a)  # closed

    # Closing the registry ends its watches quietly.
    pending = asyncio.ensure_future(anext(watch))
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)
    with pytest.raises(RegistryError):
        await client.instances("orders")


async def test_lease_lost_while_running_registers_again(etcd, registries, prefix):
    registry = registries(endpoints=etcd.endpoints, prefix=prefix)
    svc = f"svc{uuid.uuid4().hex[:6]}"
    await registry.register(instance("r-1", name=svc))
    key = f"{prefix}/{svc}/r-1"
    first = (await keys(etcd, prefix))[key].lease
    losses = metric("lease_losses", backend="etcd", service=svc)
    await asyncio.to_thread(etcd.etcdctl, "lease", "revoke", format(first, "x"))

    async def registered_again() -> bool:
        found = await keys(etcd, prefix)
        return key in found and found[key].lease != first

    await poll(registered_again, TTL, "the instance to be registered under a new lease")
    assert metric("lease_losses", backend="etcd", service=svc) == losses + 1


async def test_prefix_matching_does_not_confuse_foo_with_foobar(etcd, registries, prefix):
    registry = registries(endpoints=etcd.endpoints, prefix=prefix)
    foo1, foobar1 = instance("foo-1", name="foo"), instance("foobar-1", name="foobar")
    await registry.register(foo1)
    await registry.register(foobar1)
    # Values written by other tools: the minimal fields are enough; garbage and keys nested
    # deeper than <prefix>/<service>/<id> are ignored.
    minimal = json.dumps({"id": "foo-x", "name": "foo", "address": "10.0.0.9:9000"})
    await asyncio.to_thread(etcd.etcdctl, "put", f"{prefix}/foo/foo-x", minimal)
    await asyncio.to_thread(etcd.etcdctl, "put", f"{prefix}/foo/garbage", "not json")
    await asyncio.to_thread(etcd.etcdctl, "put", f"{prefix}/foo/deep/er", minimal)

    assert [i.id for i in await registry.instances("foo")] == ["foo-1", "foo-x"]
    assert [i.id for i in await registry.instances("foobar")] == ["foobar-1"]
    assert await registry.instances("fo") == []
    assert await registry.services() == ["foo", "foobar"]

    watch = registry.watch("foo")
    assert [i.id for i in await anext(watch)] == ["foo-1", "foo-x"]
    nxt = asyncio.ensure_future(anext(watch))
    await registry.register(instance("foobar-2", name="foobar"))  # not foo's business
    await registry.register(instance("foo-2", name="foo"))
    assert [i.id for i in await asyncio.wait_for(nxt, 5)] == ["foo-1", "foo-2", "foo-x"]
    await watch.aclose()
    with pytest.raises(ValueError):
        await registry.instances("foo/bar")


async def test_built_from_settings_options(etcd, prefix):
    registry = build_registry(
        "microframe.contrib.registry.etcd.EtcdRegistry",
        {"endpoints": etcd.endpoints, "ttl": 3, "prefix": prefix, "timeout": 2},
    )
    try:
        assert isinstance(registry, EtcdRegistry) and registry.ttl == 3
        await registry.register(instance("s-1"))
        lease = (await keys(etcd, prefix))[f"{prefix}/orders/s-1"].lease
        assert (await asyncio.to_thread(etcd.lease_ttl, lease))[0] == 3
        status = await registry.status()
        assert status.member_name == "m0" and status.members == 1 and status.version
    finally:
        await registry.close()
    for bad in ({"ttl": 0}, {"endpoints": []}, {"endpoints": ["nohost"]}, {"user": "root"},
                {"cert": "/x.pem"}, {"ca_cert": "/does/not/exist.pem"}, {"timeout": -1}):
        with pytest.raises(ImproperlyConfigured):
            EtcdRegistry(**bad)


# A 3-member cluster ---------------------------------------------------------------------------


@pytest.mark.timeout(120)  # two fail-overs, a restart and their bounded waits
async def test_cluster_member_killed_under_load_then_restarted(make_cluster, registries, prefix):
    cluster = make_cluster(size=3)
    registry = registries(endpoints=cluster.endpoints, prefix=prefix, timeout=2)
    watcher = registries(endpoints=cluster.endpoints, prefix=prefix, timeout=2)
    steady = instance("steady")
    await registry.register(steady)
    follower = Follower(watcher, "orders")
    await follower.sees(["steady"])
    ops: list[tuple[float, bool]] = []  # (start time, succeeded) of each register+lookup+deregister
    losses = metric("lease_losses", backend="etcd", service="orders")

    stop = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            inst = instance(f"load-{n}", port=8000 + n % 1000)
            started = time.monotonic()
            try:
                await registry.register(inst)
                found = {i.id for i in await registry.instances("orders")}
                await registry.deregister(inst)
                ops.append((started, {"steady", inst.id} <= found))
            except RegistryUnavailable:
                ops.append((started, False))
                try:
                    await registry.deregister(inst)
                except RegistryError:
                    pass
            await asyncio.sleep(0.02)

    def ok_since(t: float) -> int:
        return sum(1 for started, ok in ops if ok and started >= t)

    async def kill_connected() -> tuple[EtcdMember, float]:
        status = await registry.status()
        member = next(m for m in cluster.members if m.client_url in status.client_urls)
        watched = await watcher.status()
        killed = time.monotonic()
        await asyncio.to_thread(member.kill)
        await poll(lambda: _true(ok_since(killed) >= 10), 30, "operations to go on after the kill")
        assert (await registry.status()).member_name != member.name  # failed over
        if watched.member_id == status.member_id:
            assert follower.errors, "the watch on the killed member should have broken"
        return member, killed

    loader = asyncio.create_task(load())
    try:
        await poll(lambda: _true(ok_since(0) >= 10), 10, "operations to flow")
        first, killed = await kill_connected()
        await registry.register(instance("after-kill"))
        await follower.sees(["after-kill", "steady"])
        # The steady instance outlives its TTL: kept alive through another member, same lease.
        await asyncio.sleep(max(0.0, killed + TTL + 1 - time.monotonic()))
        assert f"{prefix}/orders/steady" in await keys(cluster, prefix)
        # Failures are confined to the fail-over itself (an election, then grpc moving to a live
        # member: a few seconds at most on a loaded 2-core machine).
        late_failures = [s for s, ok in ops if not ok and s > killed + FAILOVER]
        assert not late_failures, (len(late_failures), len(ops))

        # Restart it on its data directory; it rejoins, and carries the cluster when the
        # member now in use dies in turn (two of three must be up for a quorum).
        await asyncio.to_thread(first.restart)
        await asyncio.to_thread(cluster.wait_healthy)
        second, killed = await kill_connected()
        assert second is not first
        await registry.register(instance("after-second-kill"))
        await follower.sees(["after-kill", "after-second-kill", "steady"])
        assert not [s for s, ok in ops if not ok and s > killed + FAILOVER]
        assert metric("lease_losses", backend="etcd", service="orders") == losses
    finally:
        stop.set()  # the loader ends after its current operation (each is bounded)
        done, _ = await asyncio.wait({loader}, timeout=30)
        assert done, "the load task did not stop"
        loader.result()  # an error of the load itself fails the test
        await follower.stop()


# Whole cluster down ---------------------------------------------------------------------------


async def _outage(cluster: EtcdCluster, registries: Callable[..., EtcdRegistry], prefix: str,
                  *, fresh: bool) -> None:
    member = cluster.members[0]
    registrar = registries(endpoints=cluster.endpoints, prefix=prefix)
    client = registries(endpoints=cluster.endpoints, prefix=prefix, timeout=1, dial_timeout=1)
    svc = f"svc{uuid.uuid4().hex[:6]}"
    inst, late = instance("i-1", name=svc), instance("late", name=svc)
    await registrar.register(inst)
    watch = client.watch(svc)
    assert await anext(watch) == [inst]
    pending = asyncio.ensure_future(anext(watch))
    restarts = metric("watch_restarts", backend="etcd", service=svc)
    losses = metric("lease_losses", backend="etcd", service=svc)

    await asyncio.to_thread(member.stop)
    with pytest.raises(RegistryUnavailable):
        await asyncio.wait_for(pending, 5)  # the watch breaks with the outage
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=cluster.endpoints[0]):
        await client.instances(svc)
    with pytest.raises(RegistryUnavailable):
        await registrar.register(late)  # fails now, registers once etcd is back
    assert time.monotonic() - started < 3
    await asyncio.sleep(TTL + 1)  # the outage outlasts the leases

    if fresh:
        await asyncio.to_thread(member.start_fresh)  # every key and lease lost
    else:
        await asyncio.to_thread(member.restart)
    back = time.monotonic()

    async def both_registered() -> bool:
        return set(await keys(cluster, prefix)) == {f"{prefix}/{svc}/i-1", f"{prefix}/{svc}/late"}

    await poll(both_registered, 5, "the instances to be registered again")
    found = await keys(cluster, prefix)
    assert found[f"{prefix}/{svc}/i-1"].value == inst.to_json()
    # And kept alive from then on.
    await asyncio.sleep(max(0.0, back + TTL + 1 - time.monotonic()))
    assert await keys(cluster, prefix) == found

    watch = client.watch(svc)  # the consumer watches again, and so resynchronises
    assert await asyncio.wait_for(anext(watch), 5) == [inst, late]
    await watch.aclose()
    assert metric("watch_restarts", backend="etcd", service=svc) == restarts + 1
    expected_losses = 1 if fresh else 0  # a restart on the same data keeps the leases
    assert metric("lease_losses", backend="etcd", service=svc) == losses + expected_losses


async def test_outage_longer_than_ttl_same_data_dir(make_cluster, registries, prefix):
    await _outage(make_cluster(), registries, prefix, fresh=False)


async def test_outage_longer_than_ttl_empty_data_dir(make_cluster, registries, prefix):
    await _outage(make_cluster(), registries, prefix, fresh=True)


# Processes that registered --------------------------------------------------------------------

REGISTRANT = """
import asyncio, signal, sys
from microframe.contrib.registry import ServiceInstance
from microframe.contrib.registry.etcd import EtcdRegistry

async def main():
    endpoint, prefix, ttl = sys.argv[1:4]
    registry = EtcdRegistry(endpoints=[endpoint], prefix=prefix, ttl=int(ttl))
    await registry.register(ServiceInstance("w-1", "worker", "127.0.0.1", 7100))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("registered", flush=True)
    await stop.wait()
    await registry.close()

asyncio.run(main())
"""


@pytest.fixture
def registrant(etcd: EtcdCluster, prefix: str) -> Iterator[subprocess.Popen[str]]:
    """A process that registers ``worker/w-1`` with a TTL of 2 s and closes on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTRANT, etcd.endpoints[0], prefix, str(TTL)],
        cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the test's timeout
        assert line.strip() == "registered", line + proc.stdout.read()
        assert f"{prefix}/worker/w-1" in etcd.get_prefix(prefix + "/")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _gone_after(etcd: EtcdCluster, prefix: str, start: float, timeout: float) -> float:
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not etcd.get_prefix(prefix + "/"):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"the key was still there {timeout} s after the signal")


def test_kill_9_key_expires_within_ttl(etcd, prefix, registrant):
    start = time.monotonic()
    registrant.send_signal(signal.SIGKILL)
    elapsed = _gone_after(etcd, prefix, start, TTL + 1)
    assert elapsed <= TTL + 1


def test_sigterm_close_removes_key_at_once(etcd, prefix, registrant):
    start = time.monotonic()
    registrant.send_signal(signal.SIGTERM)
    elapsed = _gone_after(etcd, prefix, start, 1)
    assert registrant.wait(5) == 0
    assert elapsed < 1


# Unreachable, refused ---------------------------------------------------------------------------


async def test_unreachable_endpoints_fail_fast(registries):
    endpoints = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    registry = registries(endpoints=endpoints, dial_timeout=1, timeout=1)
    for attempt in (registry.instances("orders"), registry.services(),
                    registry.register(instance("x")), anext(registry.watch("orders"))):
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as caught:
            await attempt
        assert time.monotonic() - started < 2
        assert all(e in str(caught.value) for e in endpoints), caught.value
    started = time.monotonic()
    await registry.close()  # stops retrying the registration of x
    assert time.monotonic() - started < 2
    # A port that accepts connections and never answers, and a name that does not resolve:
    # bounded by dial_timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for endpoints in ([f"127.0.0.1:{silent.getsockname()[1]}"], ["etcd.invalid:2379"]):
            registry = registries(endpoints=endpoints, dial_timeout=0.5, timeout=0.5)
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable, match="cannot connect to etcd at") as caught:
                await registry.instances("orders")
            assert time.monotonic() - started < 1.5, caught.value


async def test_auth_token_on_every_call_and_bad_password(make_cluster, registries, prefix):
    cluster = make_cluster()
    await asyncio.to_thread(cluster.enable_auth, "s3cret")
    registry = registries(endpoints=cluster.endpoints, prefix=prefix, user="root",
                          password="s3cret")
    a = instance("a")
    await registry.register(a)
    watch = registry.watch("orders")  # etcd cancels a watch without a valid token
    assert await anext(watch) == [a]
    await registry.register(instance("b"))
    assert [i.id for i in await asyncio.wait_for(anext(watch), 5)] == ["a", "b"]
    await watch.aclose()

    # etcd forgets its tokens when it restarts: the registry authenticates again by itself.
    await asyncio.to_thread(cluster.members[0].restart)
    assert [i.id for i in await registry.instances("orders")] == ["a", "b"]
    watch = registry.watch("orders")
    assert [i.id for i in await anext(watch)] == ["a", "b"]
    await watch.aclose()
    await registry.deregister(a)
    assert list(await keys(cluster, prefix)) == [f"{prefix}/orders/b"]

    bad = registries(endpoints=cluster.endpoints, prefix=prefix, user="root", password="wrong")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="authentication failed") as caught:
        await bad.instances("orders")
    assert cluster.endpoints[0] in str(caught.value)
    assert time.monotonic() - started < 2
    anonymous = registries(endpoints=cluster.endpoints, prefix=prefix)
    with pytest.raises(RegistryUnavailable, match="refused"):
        await anonymous.instances("orders")


async def test_tls_with_client_certificates(make_cluster, registries, prefix, tmp_path):
    _require_module("cryptography")
    tls = generate_tls(tmp_path / "pki")
    cluster = make_cluster(tls=tls)
    files = {"ca_cert": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)}
    registry = registries(endpoints=cluster.endpoints, prefix=prefix, **files)
    a = instance("a")
    await registry.register(a)
    watch = registry.watch("orders")
    assert await anext(watch) == [a]
    await watch.aclose()
    assert list(await keys(cluster, prefix)) == [f"{prefix}/orders/a"]

    refused = {
        "plaintext": {},
        "unknown CA": {**files, "ca_cert": str(tls.other_ca)},
        "no client certificate": {"ca_cert": str(tls.ca)},
        "wrong server name": {**files, "server_name": "etcd.example.com"},
    }
    for case, options in refused.items():
        other = registries(endpoints=cluster.endpoints, prefix=prefix, dial_timeout=1, **options)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="cannot connect to etcd"):
            await other.instances("orders")
        assert time.monotonic() - started < 2.5, case



async def test_deregister_right_after_an_outage_waits_for_the_connection(etcd, registries, prefix):
    """The network to etcd is back, but the registry's channel is still in its reconnection
    back-off (up to 1 s): a deregistration then waits for the connection (within its timeout)
    rather than failing at once and leaving the key to expire with its lease."""
    from support.tcp_proxy import TcpProxy

    proxy = await TcpProxy(etcd.endpoints[0]).start()
    registry = registries(endpoints=[proxy.address], prefix=prefix, timeout=2, dial_timeout=1)
    inst = instance("i-1", name="leaving")
    await registry.register(inst)
    await proxy.cut()
    for _ in range(4):  # failed calls push the channel into its back-off
        with pytest.raises(RegistryUnavailable):
            await registry.instances("leaving")
    await proxy.restore()
    started = time.monotonic()
    await registry.deregister(inst)
    assert time.monotonic() - started < 2
    assert not await keys(etcd, prefix)
    await proxy.cut()
