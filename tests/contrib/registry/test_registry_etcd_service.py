"""Real services registered in real etcd: an etcd outage longer than the TTL, a client started
during it, SIGTERM and kill -9 of a service. `manage.py runserver` processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env, service_settings
from support.etcd_cluster import EtcdCluster
from support.polling import wait_until

if not os.environ.get("CI"):  # under CI a missing etcd extra fails the import below
    pytest.importorskip("aetcd")
import aetcd  # noqa: E402, F401

pytestmark = pytest.mark.timeout(90)

TTL = 2


def _settings(tmp_path: Path, name: str, endpoints: list[str], prefix: str, service: str | None = None) -> str:
    return service_settings(tmp_path, f"etcdsvc_{name}", service or name, {
        "BACKEND": "microframe.contrib.registry.etcd.EtcdRegistry",
        "OPTIONS": {"endpoints": endpoints, "ttl": TTL, "prefix": prefix, "timeout": 1},
        "CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "METADATA": {"zone": "a"},
    })


def _greet(address: str, name: str) -> str:
    with grpc.insecure_channel(address) as channel:
        return hello_pb2_grpc.GreeterStub(channel).SayHello(hello_pb2.HelloRequest(name=name), timeout=10).message


def _keys(cluster: EtcdCluster, prefix: str, service: str) -> dict[str, dict]:
    found = cluster.get_prefix(f"{prefix}/{service}/")
    return {key: json.loads(kv.value) for key, kv in found.items()}


def _resolve_in_new_process(tmp_path: Path, settings: str, service: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import asyncio, microframe\n"
        "from microframe.discovery.cache import get_discovery_cache\n"
        "microframe.setup()\n"
        "async def main():\n"
        f"    found = await get_discovery_cache().instances({service!r})\n"
        "    print(','.join(i.address for i in found))\n"
        "asyncio.run(main())\n"
    )
    env = base_env(
        MICROFRAME_SETTINGS_MODULE=settings,
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}",
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)


def test_services_ride_out_an_etcd_outage_and_leave_cleanly(start_server, tmp_path):
    prefix = f"/test/{uuid.uuid4().hex[:8]}"
    with EtcdCluster(size=1) as cluster:
        cluster.start()
        env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
        alpha_settings = _settings(tmp_path, "alpha", cluster.endpoints, prefix)
        beta_settings = _settings(tmp_path, "beta", cluster.endpoints, prefix)
        alpha = start_server(settings=alpha_settings, env=env)
        beta = start_server(settings=beta_settings, env=env)

        # Registered, with the value of DESIGN §6, under the configured prefix.
        key = f"{prefix}/alpha/{alpha.address}"
        value = wait_until(lambda: _keys(cluster, prefix, "alpha").get(key), 5, "alpha's key")
        assert value["address"] == alpha.address and value["metadata"] == {"zone": "a"}
        assert _greet(beta.address, "discover:alpha") == alpha.address

        # etcd goes away for longer than the TTL.
        member = cluster.members[0]
        member.stop()
        down_since = time.monotonic()
        while time.monotonic() - down_since < TTL + 1.5:
            # Both services keep serving, and beta keeps resolving alpha from its cache.
            assert _greet(alpha.address, "still") == "Hello, still!"
            assert _greet(beta.address, "discover:alpha") == alpha.address
            time.sleep(0.2)
        # A client process started now resolves from the snapshot beta's cache left on disk.
        fresh = _resolve_in_new_process(tmp_path, beta_settings, "alpha")
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.strip() == alpha.address
        assert "stale" in fresh.stderr or "snapshot" in fresh.stderr

        # etcd is back (same data dir; the leases expired meanwhile): both re-register by themselves.
        member.restart()
        back_since = time.monotonic()
        wait_until(lambda: _keys(cluster, prefix, "alpha").get(key), 8, "alpha to register again")
        wait_until(lambda: _keys(cluster, prefix, "beta"), 8, "beta to register again")
        assert time.monotonic() - back_since < 8
        assert alpha.proc.poll() is None and beta.proc.poll() is None  # never restarted

        # SIGTERM: the key is gone within a second (deregistered before the drain), as etcd's
        # own watch sees it.
        with cluster.watch_prefix(f"{prefix}/") as watch:
            stopped_at = time.monotonic()
            alpha.proc.send_signal(signal.SIGTERM)
            gone_at = watch.wait_for(lambda k, deleted: k == key and deleted, 10)
        assert gone_at - stopped_at < 1.0, f"deregistered {gone_at - stopped_at:.2f} s after SIGTERM"
        assert key not in _keys(cluster, prefix, "alpha")
        assert alpha.proc.wait(10) == 0

        # kill -9: the key expires with its lease. Without an outage before it that takes
        # TTL + 1 s at most (test_registry_etcd.py checks it); here, on an etcd member that was
        # just restarted, etcd itself took up to TTL + 1.2 s (measured 2.2-3.2 s for a 2 s TTL
        # on a 2-core machine, the key's last refresh at most TTL / 3 before the kill: etcd
        # looks for expired leases every 500 ms and revokes them through its raft log).
        beta.proc.kill()
        killed_at = time.monotonic()
        wait_until(lambda: not _keys(cluster, prefix, "beta"), TTL + 1.5, "beta's key to expire")
        assert time.monotonic() - killed_at <= TTL + 1.5


async def test_client_balances_over_etcd_and_rides_out_a_killed_instance(start_server, tmp_path):
    import asyncio
    import collections

    from microframe.contrib.registry.etcd import EtcdRegistry
    from microframe.core.exceptions import RpcError
    from microframe.discovery.cache import DiscoveryCache

    from example.generate.hello_client import GreeterClient

    prefix = f"/test/{uuid.uuid4().hex[:8]}"
    with EtcdCluster(size=1) as cluster:
        cluster.start()
        env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
        servers = []
        for n in range(3):
            settings = _settings(tmp_path, f"trio{n}", cluster.endpoints, prefix, service="trio")
            servers.append(start_server(settings=settings, env=env))
        registry = EtcdRegistry(endpoints=cluster.endpoints, prefix=prefix, ttl=TTL)
        cache = DiscoveryCache(registry, tmp_path / "client-cache")
        deadline = time.monotonic() + 10
        while len(await cache.instances("trio")) != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        client = GreeterClient("trio", balancer="round_robin", discovery=cache)
        seen = collections.Counter([(await client.SayHello(hello_pb2.HelloRequest(name="pid"))).message for _ in range(90)])
        assert sorted(seen.values()) == [30, 30, 30]
        assert set(seen) == {str(s.proc.pid) for s in servers}

        results: collections.Counter[str] = collections.Counter()
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    await client.SayHello(hello_pb2.HelloRequest(name="load"), timeout=2)
                    results["OK"] += 1
                except RpcError as err:
                    results[err.code.name] += 1

        tasks = [asyncio.create_task(loop()) for _ in range(8)]
        await asyncio.sleep(0.5)
        servers[0].proc.kill()
        await asyncio.sleep(TTL + 1.5)  # its lease expires: etcd and the watch drop it
        stop.set()
        await asyncio.gather(*tasks)
        total = sum(results.values())
        # Only the calls in flight on the killed instance (8 callers: at most 8) fail, with a
        # clear UNAVAILABLE: they may have run, so they are not sent again (is_retryable, rule 4).
        assert total > 300 and results["OK"] >= total - 8 and set(results) <= {"OK", "UNAVAILABLE"}, results
        assert len(await cache.instances("trio")) == 2
        await cache.close()
        await registry.close()
