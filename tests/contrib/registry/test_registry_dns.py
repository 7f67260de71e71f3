"""DNS discovery against a real DNS server (Debian's dnsmasq on a loopback port), its records
rewritten while clients run: A/AAAA records (a headless service) and SRV records (port and
weight from the record)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.cache import DiscoveryCache
from microframe.discovery.registry import RegistryUnavailable

from example.generate.hello_client import GreeterClient
from example.generate.hello_pb2 import HelloRequest
from support.dns_server import DnsServer
from support.servers import ServerProcess

if not os.environ.get("CI"):
    pytest.importorskip("dns")
from microframe.contrib.registry.dns import DnsRegistry  # noqa: E402

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def dns_server(tmp_path: Path):
    server = DnsServer(tmp_path / "dns")
    try:
        yield server
    finally:
        server.stop()


async def test_a_and_aaaa_records_and_a_hosts_change_followed_within_the_ttl(dns_server):
    dns_server.set_hosts({"orders.test": ["127.0.0.10"]})
    dns_server.start()
    registry = DnsRegistry(template="{service}.test", port=7000, nameservers=[dns_server.address],
                           min_ttl=0.2, max_ttl=5)
    watch = registry.watch("orders")
    assert [i.address for i in await anext(watch)] == ["127.0.0.10:7000"]
    dns_server.set_hosts({"orders.test": ["127.0.0.10", "127.0.0.11", "::1"]})
    started = time.monotonic()
    seen = await asyncio.wait_for(anext(watch), 5)
    took = time.monotonic() - started
    assert [i.address for i in seen] == ["127.0.0.10:7000", "127.0.0.11:7000", "[::1]:7000"]
    assert took < 1 + 0.5, took  # the records' TTL (1 s), and the query
    assert await registry.instances("nothing") == []  # NXDOMAIN: a service without instances
    await watch.aclose()


async def test_a_refused_aaaa_query_keeps_the_a_records(tmp_path):
    """A server that refuses the AAAA query of an IPv4-only name (dnsmasq without a local
    zone, many forwarders) must not hide the addresses the A query found."""
    server = DnsServer(tmp_path / "dns", local=False)
    server.set_hosts({"orders.test": ["127.0.0.10", "127.0.0.11"]})
    server.start()
    try:
        registry = DnsRegistry(template="{service}.test", port=7000,
                               nameservers=[server.address], min_ttl=0.2, timeout=1)
        with pytest.raises(RegistryUnavailable, match="REFUSED"):
            await registry._query("orders.test", "AAAA")  # what the server really answers
        found, wait = await registry.resolve("orders")
        assert [i.address for i in found] == ["127.0.0.10:7000", "127.0.0.11:7000"]
        assert wait == 0.2  # asked again soon: the other family may answer next time
        # Nothing answered at all: unavailable, the last known set is kept.
        with pytest.raises(RegistryUnavailable):
            await registry.resolve("nothing")
    finally:
        server.stop()


async def test_srv_records_give_port_and_weight_and_the_lowest_priority_wins(dns_server):
    dns_server.set_hosts({"a.test": ["127.0.0.20"], "b.test": ["127.0.0.21"]})
    dns_server.set_srv([
        ("_grpc._tcp.users.test", "a.test", 6001, 0, 10),
        ("_grpc._tcp.users.test", "b.test", 6002, 0, 30),
        ("_grpc._tcp.users.test", "b.test", 6009, 1, 50),  # a backup: only when priority 0 is gone
    ])
    dns_server.start()
    registry = DnsRegistry(names={"users": "_grpc._tcp.users.test"},
                           nameservers=[dns_server.address])
    found = await registry.instances("users")
    assert [(i.address, i.weight) for i in found] == [("127.0.0.20:6001", 10), ("127.0.0.21:6002", 30)]


async def test_a_resolver_down_is_unavailable_and_bad_options_are_refused(dns_server, tmp_path):
    registry = DnsRegistry(template="{service}.test", nameservers=[dns_server.address],
                           timeout=0.5)
    with pytest.raises(RegistryUnavailable, match="cannot resolve orders.test"):
        await registry.instances("orders")  # nothing listens
    for options in ({"template": "no-placeholder"}, {"port": 0}, {"min_ttl": 5, "max_ttl": 1},
                    {"nameservers": ["127.0.0.1:53", "127.0.0.2:5353"]}, {"timeout": 0}):
        with pytest.raises(ImproperlyConfigured):
            DnsRegistry(**options).resolver()


def _pid_of(server: ServerProcess) -> str:
    return str(server.proc.pid)


async def test_a_client_follows_srv_changes_and_keeps_the_last_set_while_dns_is_down(
    dns_server, tmp_path: Path
):
    servers = [ServerProcess(tmp_path, settings="testservice.settings").wait_serving()
               for _ in range(2)]
    try:
        def srv(*chosen: ServerProcess) -> list[tuple[str, str, int, int, int]]:
            return [("_grpc._tcp.users.test", "svc.test", s.port, 0, 100) for s in chosen]

        dns_server.set_hosts({"svc.test": ["127.0.0.1"]})
        dns_server.set_srv(srv(servers[0]))
        dns_server.start()
        registry = DnsRegistry(names={"users": "_grpc._tcp.users.test"},
                               nameservers=[dns_server.address], min_ttl=0.2, max_ttl=2,
                               timeout=0.5)
        cache = DiscoveryCache(registry, tmp_path / "discovery")
        client = GreeterClient("users", discovery=cache, balancer="round_robin")

        async def pids(calls: int = 12) -> set[str]:
            return {(await client.SayHello(HelloRequest(name="pid"))).message
                    for _ in range(calls)}

        async def until(wanted: set[str]) -> float:
            started = time.monotonic()
            while (found := await pids()) != wanted:
                assert time.monotonic() - started < 10, found
                await asyncio.sleep(0.05)
            return time.monotonic() - started

        assert await pids() == {_pid_of(servers[0])}
        dns_server.set_srv(srv(*servers))
        both = await until({_pid_of(s) for s in servers})
        dns_server.set_srv(srv(servers[1]))
        moved = await until({_pid_of(servers[1])})
        print(f"DNS change followed in {both:.2f} s and {moved:.2f} s (records' TTL 1 s)")
        assert both < 3 and moved < 3
        # The DNS server goes: the last set stays, calls go on.
        dns_server.stop()
        await asyncio.sleep(1.5)  # past the records' TTL: a resolution fails meanwhile
        assert await pids() == {_pid_of(servers[1])}
        await cache.close()
    finally:
        for server in servers:
            server.terminate()
