"""The registry battery without etcd: the file and static backends, the discovery cache,
registration by runserver, the register command and the checks. Real files, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from microframe.contrib.registry import ServiceInstance
from microframe.contrib.registry.file import FileRegistry
from microframe.contrib.registry.static import StaticRegistry
from microframe.core.checks import run_checks
from microframe.discovery.cache import SNAPSHOT_INTERVAL, DiscoveryCache
from microframe.discovery.instance import InvalidInstance
from microframe.discovery.metrics import registry_metrics
from microframe.discovery.registry import RegistryUnavailable
from microframe.test.ports import free_port
from microframe.test.utils import override_settings

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env, service_settings
from support.polling import wait_until

Req = hello_pb2.HelloRequest


def instance(name: str = "hello", port: int = 50051, **kwargs: object) -> ServiceInstance:
    return ServiceInstance(id=f"127.0.0.1:{port}", name=name, host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]


async def next_set(stream, timeout: float = 5.0) -> list[ServiceInstance]:
    return await asyncio.wait_for(stream.__anext__(), timeout)


# -- values ------------------------------------------------------------------------------------


def test_instance_json_round_trip_and_validation():
    one = instance(weight=7, metadata={"zone": "a"}, version="1.2")
    data = json.loads(one.to_json())
    assert data == {
        "id": "127.0.0.1:50051", "name": "hello", "address": "127.0.0.1:50051", "host": "127.0.0.1",
        "port": 50051, "weight": 7, "metadata": {"zone": "a"}, "version": "1.2",
    }
    assert ServiceInstance.from_json(one.to_json()) == one
    v6 = ServiceInstance(id="a", name="s", host="::1", port=1)
    assert v6.address == "[::1]:1" and ServiceInstance.from_json(v6.to_json()).host == "::1"
    for bad in ('{"id": "a", "name": "s"}', '{"id": "a", "name": "s", "address": "nope"}', "[]", "{"):
        with pytest.raises(InvalidInstance):
            ServiceInstance.from_json(bad)
    with pytest.raises(InvalidInstance):
        ServiceInstance(id="a/b", name="s", host="h", port=1)


# -- the file registry -------------------------------------------------------------------------


async def test_file_registry_register_watch_deregister(tmp_path):
    owner, reader = FileRegistry(tmp_path, ttl=3), FileRegistry(tmp_path, ttl=3)
    stream = reader.watch("hello")
    assert await next_set(stream) == []
    one, two = instance(port=1), instance(port=2, weight=5)
    started = time.monotonic()
    await owner.register(one)
    assert await next_set(stream) == [one]
    assert time.monotonic() - started < 1.0  # file events, not a slow poll
    await owner.register(two)
    assert await next_set(stream) == [one, two]
    # "hello" is not confused with "hello2".
    await owner.register(instance("hello2", port=3))
    assert await reader.instances("hello") == [one, two]
    assert await reader.services() == ["hello", "hello2"]
    await owner.deregister(one)
    assert await next_set(stream) == [two]
    await owner.close()
    assert await next_set(stream) == []
    assert await reader.services() == []
    await stream.aclose()


async def test_file_registry_heartbeat_rewrites_a_removed_entry(tmp_path):
    registry = FileRegistry(tmp_path, ttl=0.6)
    one = instance()
    await registry.register(one)
    (tmp_path / "hello" / f"{one.id}.json").unlink()
    losses = registry_metrics().lease_losses.labels("file", "hello")
    before = losses._value.get()

    async def back() -> bool:
        while not await registry.instances("hello"):
            await asyncio.sleep(0.05)
        return True

    assert await asyncio.wait_for(back(), 3)
    assert losses._value.get() == before + 1
    await registry.close()


def _registrar(directory: Path, ttl: float, port: int) -> subprocess.Popen[str]:
    code = (
        "import asyncio, sys\n"
        "from microframe.contrib.registry.file import FileRegistry\n"
        "from microframe.contrib.registry import ServiceInstance\n"
        "async def main():\n"
        f"    r = FileRegistry({str(directory)!r}, ttl={ttl})\n"
        f"    await r.register(ServiceInstance(id='p{port}', name='hello', host='127.0.0.1', port={port}))\n"
        "    print('registered', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=base_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "registered"
    return proc


async def test_file_registry_drops_killed_and_hung_processes(tmp_path):
    reader = FileRegistry(tmp_path, ttl=1.0)
    killed, hung = _registrar(tmp_path, 1.0, 1), _registrar(tmp_path, 1.0, 2)
    try:
        assert [i.id for i in await reader.instances("hello")] == ["p1", "p2"]
        stream = reader.watch("hello")
        assert len(await next_set(stream)) == 2
        # kill -9: its process is gone, so its entry goes at the next look (a heartbeat tick).
        killed.kill()
        killed.wait(5)
        started = time.monotonic()
        assert [i.id for i in await next_set(stream, 3)] == ["p2"]
        assert time.monotonic() - started < 1.0
        # A hung process (SIGSTOP) stops beating: its entry expires after the TTL.
        os.kill(hung.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert await next_set(stream, 4) == []
        assert 0.3 < time.monotonic() - started < 2.5
        await stream.aclose()
    finally:
        for proc in (killed, hung):
            proc.kill()
            proc.wait(5)


async def test_file_registry_unusable_directory_is_registry_unavailable(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    registry = FileRegistry(blocker, ttl=1)
    with pytest.raises(RegistryUnavailable, match="not-a-dir"):
        await registry.register(instance())
    with pytest.raises(RegistryUnavailable):
        await registry.watch("hello").__anext__()
    await registry.close()


async def test_static_registry():
    registry = StaticRegistry(services={
        "orders": ["10.0.0.5:50051", {"address": "10.0.0.6:50051", "weight": 200, "metadata": {"zone": "b"}}],
    })
    found = await registry.instances("orders")
    assert [(i.address, i.weight, dict(i.metadata)) for i in found] == [
        ("10.0.0.5:50051", 100, {}), ("10.0.0.6:50051", 200, {"zone": "b"}),
    ]
    stream = registry.watch("orders")
    assert await next_set(stream) == found
    extra = instance("orders", port=7)
    await registry.register(extra)
    assert extra in await next_set(stream)
    await stream.aclose()
    from microframe.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="orders"):
        StaticRegistry(services={"orders": ["no-port"]})


# -- the discovery cache -----------------------------------------------------------------------


async def test_cache_follows_the_registry_and_keeps_a_snapshot(tmp_path):
    registry = FileRegistry(tmp_path / "registry", ttl=3)
    cache = DiscoveryCache(FileRegistry(tmp_path / "registry", ttl=3), tmp_path / "cache")
    await registry.register(instance(port=1))
    assert [i.port for i in await cache.instances("hello")] == [1]
    assert not cache.is_stale("hello")
    version = cache.version("hello")
    await registry.register(instance(port=2))
    wait_for = asyncio.get_running_loop().time() + 3
    while cache.version("hello") == version and asyncio.get_running_loop().time() < wait_for:
        await asyncio.sleep(0.02)
    assert [i.port for i in await cache.instances("hello")] == [1, 2]

    def saved() -> list[str]:
        snapshot = json.loads((tmp_path / "cache" / "hello.json").read_text())
        return [i["address"] for i in snapshot["instances"]]

    # The snapshot follows by itself, off the event loop, within SNAPSHOT_INTERVAL.
    wait_for = asyncio.get_running_loop().time() + SNAPSHOT_INTERVAL + 2
    while saved() != ["127.0.0.1:1", "127.0.0.1:2"]:
        assert asyncio.get_running_loop().time() < wait_for, saved()
        await asyncio.sleep(0.02)
    await cache.close()
    await registry.close()


async def test_a_snapshot_another_user_could_have_written_is_never_used(tmp_path, monkeypatch):
    """The default snapshot directory is in the shared temporary directory: one made there
    beforehand by another local user (or open to every user) must not route this service's
    calls to the instances they wrote in it."""
    import tempfile

    from microframe.discovery import cache as cache_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"microframe-discovery-{os.geteuid()}"
    planted.mkdir()
    (planted / "hello.json").write_text(json.dumps(
        {"instances": [instance(port=6666).to_dict()], "service": "hello"}
    ))
    monkeypatch.setattr(cache_module, "DEFAULT_CACHE_DIR", planted)
    gone = tmp_path / "no-registry"
    gone.write_text("not a directory: every registry operation fails")
    for mode, owner in ((0o777, os.geteuid()), (0o700, 65534)):
        planted.chmod(mode)
        os.chown(planted, owner, -1)
        cache = DiscoveryCache(FileRegistry(gone, ttl=3), first_read_timeout=0.2)
        with pytest.raises(RegistryUnavailable, match="unknown"):
            await cache.instances("hello")
        await cache.close()
    # The directory made safe again (this user's, 0700): the snapshot is read.
    planted.chmod(0o700)
    os.chown(planted, os.geteuid(), -1)
    cache = DiscoveryCache(FileRegistry(gone, ttl=3), first_read_timeout=0.2)
    assert [i.port for i in await cache.instances("hello")] == [6666]
    await cache.close()
    # A file of someone else's in a sound directory is refused as well.
    os.chown(planted / "hello.json", 65534, -1)
    cache = DiscoveryCache(FileRegistry(gone, ttl=3), first_read_timeout=0.2)
    with pytest.raises(RegistryUnavailable, match="unknown"):
        await cache.instances("hello")
    await cache.close()


async def test_cache_survives_an_unreachable_registry_from_its_snapshot(tmp_path):
    # A process that knew two instances saved them; the registry then becomes unusable.
    directory = tmp_path / "registry"
    registry = FileRegistry(directory, ttl=3)
    await registry.register(instance(port=1))
    await registry.register(instance(port=2))
    first = DiscoveryCache(FileRegistry(directory, ttl=3), tmp_path / "cache")
    assert len(await first.instances("hello")) == 2
    await first.close()
    # The registry directory is replaced by a file: every registry operation fails.
    for path in directory.rglob("*.json"):
        path.unlink()
    (directory / "hello").rmdir()
    directory.rmdir()
    directory.write_text("the registry is gone")
    # A process started now still resolves, from the disk snapshot, and says it is stale.
    second = DiscoveryCache(FileRegistry(directory, ttl=3), tmp_path / "cache", first_read_timeout=1)
    found = await second.instances("hello")
    assert [i.port for i in found] == [1, 2]
    assert second.is_stale("hello")
    stale = registry_metrics().stale.labels("hello")
    assert stale._value.get() == 1
    # Nothing known at all (no snapshot): a clear error, not an empty list.
    with pytest.raises(RegistryUnavailable, match="unknown"):
        await second.instances("nobody")
    # The registry comes back, with one instance: the cache resynchronises by itself.
    directory.unlink()
    back = FileRegistry(directory, ttl=3)
    await back.register(instance(port=3))
    deadline = asyncio.get_running_loop().time() + 8
    while second.is_stale("hello") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert not second.is_stale("hello")
    assert [i.port for i in await second.instances("hello")] == [3]
    assert stale._value.get() == 0
    await second.close()
    await back.close()
    await registry.close()


# -- runserver registers, deregisters; services find each other ---------------------------------


def _service_settings(tmp_path: Path, name: str, registry_dir: Path) -> str:
    return service_settings(tmp_path, f"svc_{name}", name, {
        "BACKEND": "microframe.contrib.registry.file.FileRegistry",
        "OPTIONS": {"directory": str(registry_dir), "ttl": 2},
        "CACHE_DIR": str(tmp_path / f"cache-{name}"),
        "METADATA": {"zone": "a"},
    })


def _greet(address: str, name: str) -> str:
    with grpc.insecure_channel(address) as channel:
        return hello_pb2_grpc.GreeterStub(channel).SayHello(Req(name=name), timeout=10).message


def test_two_services_find_each_other_and_leave_the_registry(start_server, tmp_path):
    registry_dir = tmp_path / "registry"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    alpha = start_server(settings=_service_settings(tmp_path, "alpha", registry_dir), env=env)
    beta = start_server(settings=_service_settings(tmp_path, "beta", registry_dir), env=env)
    # Each finds the other through the registry, from inside its own process.
    assert _greet(alpha.address, "discover:beta") == beta.address
    assert _greet(beta.address, "discover:alpha") == alpha.address
    entry = json.loads((registry_dir / "alpha" / f"{alpha.address}.json").read_text())
    assert entry["address"] == alpha.address and entry["metadata"] == {"zone": "a"}
    assert entry["pid"] == alpha.proc.pid
    wait_until(lambda: "registry: registered" in alpha.output, 5, "the registration log line")
    # SIGTERM: deregistered at once (before the drain).
    started = time.monotonic()
    alpha.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not (registry_dir / "alpha").exists() or not list((registry_dir / "alpha").glob("*.json")),
               1.0, "alpha to leave the registry")
    assert time.monotonic() - started < 1.0
    assert alpha.proc.wait(10) == 0
    # kill -9: beta's entry is dropped as soon as someone looks (its process is gone).
    beta.proc.kill()
    beta.proc.wait(5)
    reader = FileRegistry(registry_dir, ttl=2)
    assert asyncio.run(reader.instances("beta")) == []


# -- the register command ----------------------------------------------------------------------


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )


def test_register_command(tmp_path):
    env = base_env(MICROFRAME_REGISTRY_DIR=str(tmp_path / "registry"))
    port = free_port()
    keeper = subprocess.Popen(
        [sys.executable, "manage.py", "register", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    watcher: subprocess.Popen[str] | None = None
    try:
        assert keeper.stdout is not None
        assert keeper.stdout.readline().startswith(f"Registered 127.0.0.1:{port} as hello")
        watcher = subprocess.Popen(
            [sys.executable, "manage.py", "register", "--watch", "hello"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert watcher.stdout is not None
        listed = _manage("register", "--list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert [i["address"] for i in json.loads(listed.stdout)["hello"]] == [f"127.0.0.1:{port}"]
        first = watcher.stdout.readline()
        assert "hello: 1 instance(s)" in first
        keeper.send_signal(signal.SIGINT)
        assert keeper.wait(10) == 0
        assert keeper.stdout.read().strip() == f"Deregistered 127.0.0.1:{port}."
        watcher.stdout.readline()  # the instance line of the first set
        assert watcher.stdout.readline().split()[1:4] == ["-", "hello", f"127.0.0.1:{port}"]
        missing = _manage("register", "--deregister", "nope", env=env)
        assert missing.returncode == 1 and "No instance 'nope' of 'hello'" in missing.stderr
    finally:
        for proc in (keeper, watcher):
            if proc is not None:
                proc.kill()
                proc.wait(5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_register_watch_stops_cleanly_on_a_signal(tmp_path, sig):
    """CONTROL-C (or SIGTERM) ends ``register --watch`` with status 0, like runserver, and
    without a traceback (it used to end in "aclose(): asynchronous generator is already
    running")."""
    env = base_env(MICROFRAME_REGISTRY_DIR=str(tmp_path / "registry"))
    watcher = subprocess.Popen(
        [sys.executable, "manage.py", "register", "--watch", "hello"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # bounded: the watch answers within --timeout (5 s)
        assert "hello: 0 instance(s)" in first, first
        watcher.send_signal(sig)
        out, err = watcher.communicate(timeout=15)
    finally:
        watcher.kill()
        watcher.wait(5)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err


# -- checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "check_id", "text"),
    [
        ({"BACKEND": "microframe.contrib.registry.nope.Nope"}, "registry.E001", "cannot be imported"),
        ({"BACKEND": "FileRegistry"}, "registry.E001", "dotted path"),
        ({"OPTIONS": {"ttl": -1}}, "registry.E002", "ttl must be positive"),
        ({"OPTIONS": {"colour": "blue"}}, "registry.E002", "colour"),
        ({"WEIGTH": 3}, "registry.E003", "WEIGTH"),
        ({"INSTANCE_ID": "a/b"}, "registry.E003", "instance id"),
        ({"ADVERTISE": "host:99999"}, "registry.E003", "ADVERTISE"),
    ],
)
def test_registry_checks(registry, check_id, text):
    with override_settings(REGISTRY=registry, merge=True):
        messages = [m for m in run_checks(tags=["registry"]) if m.id == check_id]
    assert messages and text in messages[0].msg, [(m.id, m.msg) for m in run_checks(tags=["registry"])]


def test_registry_deploy_check_reports_what_it_found(tmp_path):
    registry = FileRegistry(tmp_path, ttl=3)
    asyncio.run(registry.register(instance("orders", port=9)))
    try:
        with override_settings(REGISTRY={"OPTIONS": {"directory": str(tmp_path)}}, merge=True):
            messages = {m.id: m.msg for m in run_checks(tags=["registry"], include_deployment_checks=True)}
        assert messages.get("registry.I001") == "The registry holds orders (1)."
        assert "registry.W001" in messages  # advertised on 127.0.0.1
    finally:
        asyncio.run(registry.close())


def test_discovery_and_the_client_load_no_battery():
    """ServiceInstance, the Registry protocol, the backend of the settings and the discovery
    cache are core (microframe.discovery): the client library imports no battery to use them."""
    code = (
        "import sys, microframe.client, microframe.discovery, microframe.discovery.cache\n"
        "print(sorted(m for m in sys.modules if m.startswith('microframe.contrib')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
