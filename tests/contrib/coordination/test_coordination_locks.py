"""Locks against real etcd: mutual exclusion across real processes (1 and 3 members), fencing
tokens, a holder killed with SIGKILL, timeouts, release on exception and cancellation, and a
lease revoked under a holder. Every wait is bounded."""

from __future__ import annotations

import asyncio
import select
import subprocess
import time

import pytest

from microframe.contrib.coordination import Lock, LockTimeout, lock
from microframe.contrib.registry.etcd_transport import EtcdConnection
from microframe.test import override_settings

from support.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.timeout(90)

TTL = 2
PROCESSES = 8
INCREMENTS = 10


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``proc`` prints; AssertionError after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from pid {proc.pid} within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"pid {proc.pid} exited with {proc.wait(5)}"
    return line.strip()


def coordination(cluster: EtcdCluster, prefix: str, ttl: int = TTL) -> dict[str, object]:
    return {"OPTIONS": {"endpoints": cluster.endpoints, "timeout": 2}, "PREFIX": prefix, "TTL": ttl}


@pytest.mark.parametrize("members", [1, 3])
def test_processes_never_lose_an_update(request, members, prefix, contenders, tmp_path):
    cluster: EtcdCluster = request.getfixturevalue("etcd" if members == 1 else "etcd3")
    counter, tokens = tmp_path / "counter", tmp_path / "tokens"
    counter.write_text("0")
    tokens.write_text("")
    started = time.monotonic()
    procs = [
        contenders("counter", ",".join(cluster.endpoints), prefix, TTL, INCREMENTS, counter, tokens)
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    elapsed = time.monotonic() - started
    assert int(counter.read_text()) == PROCESSES * INCREMENTS
    seen = [int(line) for line in tokens.read_text().split()]
    assert len(seen) == PROCESSES * INCREMENTS
    # Appended under the lock, so in acquisition order: every holder's token beats the last.
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False)), seen
    print(f"{PROCESSES} x {INCREMENTS} increments on {members} member(s): {elapsed:.1f} s")
    assert not cluster.get_prefix(f"{prefix}/locks/")  # every key released


def test_a_killed_holder_lets_another_in_within_the_ttl(etcd, prefix, contenders):
    endpoints = ",".join(etcd.endpoints)
    holder = contenders("hold", endpoints, prefix, TTL, "job")
    first = int(read_line(holder, 20).split()[1])
    waiter = contenders("wait", endpoints, prefix, TTL, "job", 30)
    assert read_line(waiter, 20) == "waiting"
    # The waiter is queued behind the holder (its key is there) before the kill.
    deadline = time.monotonic() + 10
    while len(etcd.get_prefix(f"{prefix}/locks/job/")) < 2:
        assert time.monotonic() < deadline, "the waiter never queued"
    holder.kill()
    killed = time.monotonic()
    words = read_line(waiter, TTL + 5).split()
    took = float(words[2]) - killed
    print(f"lock taken over {took:.2f} s after SIGKILL of its holder (TTL {TTL} s)")
    assert int(words[1]) > first
    assert took <= TTL + 1, f"taken over {took:.2f} s after the kill"


async def test_timeout_release_on_exception_and_cancellation(etcd, prefix):
    with override_settings(COORDINATION=coordination(etcd, prefix)):
        async with lock("t") as held:
            assert held.valid and held.token and held.key and held.key.startswith(f"{prefix}/locks/t/")
            other = lock("t", timeout=0.5)
            started = time.monotonic()
            with pytest.raises(LockTimeout) as info:
                await other.acquire()
            assert isinstance(info.value, TimeoutError)
            assert 0.4 <= time.monotonic() - started < 2.0
            assert not other.held and other.lease_id is None
            keys = etcd.get_prefix(f"{prefix}/locks/t/")
            assert list(keys) == [held.key]  # the timed-out contender left the queue
        assert not etcd.get_prefix(f"{prefix}/locks/t/")

        with pytest.raises(KeyError):
            async with lock("t") as held:
                assert held.valid
                raise KeyError("inside the lock")
        assert not etcd.get_prefix(f"{prefix}/locks/t/")

        # Cancelled while holding it, and while waiting for it: released either way.
        entered = asyncio.Event()

        async def hold() -> None:
            async with lock("t"):
                entered.set()
                await asyncio.Event().wait()

        holder = asyncio.create_task(hold())
        await asyncio.wait_for(entered.wait(), 10)
        waiter = asyncio.create_task(lock("t").acquire())
        deadline = time.monotonic() + 10
        while len(etcd.get_prefix(f"{prefix}/locks/t/")) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        deadline = time.monotonic() + 5
        while etcd.get_prefix(f"{prefix}/locks/t/"):
            assert time.monotonic() < deadline, "keys left after cancellation"
            await asyncio.sleep(0.05)
        async with lock("t", timeout=2) as again:
            assert again.valid


async def test_a_revoked_lease_sets_lost(etcd, prefix):
    with override_settings(COORDINATION=coordination(etcd, prefix, ttl=3)):
        async with lock("r") as held:
            first = held.token
            assert held.lease_id is not None and not held.lost.is_set()
            etcd.etcdctl("lease", "revoke", format(held.lease_id, "x"))
            revoked = time.monotonic()
            await asyncio.wait_for(held.lost.wait(), 3 / 3 + 2)
            print(f"lease loss seen {time.monotonic() - revoked:.2f} s after the revoke")
            assert not held.valid and held.held
            # Another contender gets it at once, with a greater token.
            async with lock("r", timeout=2) as other:
                assert other.token > first and other.valid
        assert not held.held


async def test_a_key_deleted_by_someone_else_sets_lost(etcd, prefix):
    """``etcdctl del`` of the holder's key serves the next contender at once, though the
    holder's lease lives on: the holder must know it no longer holds the lock."""
    with override_settings(COORDINATION=coordination(etcd, prefix, ttl=30)):
        async with lock("d") as held:
            waiter = asyncio.ensure_future(lock("d", timeout=5).acquire())
            deadline = time.monotonic() + 5
            while len(etcd.get_prefix(f"{prefix}/locks/d/")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert held.key is not None
            etcd.etcdctl("del", held.key)
            deleted = time.monotonic()
            other = await asyncio.wait_for(waiter, 5)
            try:
                await asyncio.wait_for(held.lost.wait(), 2)
                print(f"lost set {time.monotonic() - deleted:.3f} s after the deletion")
                assert not held.valid and other.valid and other.token > held.token
            finally:
                await other.release()
        # The lease is long: a holder that lost its key still releases it (nothing left).
        assert etcd.get_prefix(f"{prefix}/locks/d/") == {}


async def test_explicit_connection_and_a_missing_etcd():
    from microframe.core.exceptions import ImproperlyConfigured

    with override_settings(
        COORDINATION={"OPTIONS": None, "PREFIX": "/x", "TTL": 2},
        REGISTRY={"BACKEND": "microframe.contrib.registry.file.FileRegistry", "OPTIONS": {}},
    ):
        with pytest.raises(ImproperlyConfigured, match="need etcd"):
            await lock("x").acquire()


async def test_the_registry_s_etcd_serves_when_coordination_names_none(etcd, prefix):
    registry = {"BACKEND": "microframe.contrib.registry.etcd.EtcdRegistry",
                "OPTIONS": {"endpoints": etcd.endpoints, "ttl": 5, "prefix": "/elsewhere"}}
    with override_settings(
        COORDINATION={"OPTIONS": None, "PREFIX": prefix, "TTL": 2}, REGISTRY=registry
    ):
        async with lock("via-registry", timeout=5) as held:
            assert held.valid
    connection = EtcdConnection(etcd.endpoints, timeout=2)
    try:
        async with Lock("explicit", 2, connection=connection, prefix=prefix) as held:
            assert held.key.startswith(f"{prefix}/locks/explicit/")
    finally:
        await connection.close()




async def test_etcd_down_loses_the_lock_within_the_ttl_and_fails_new_ones_clearly(prefix):
    from microframe.contrib.coordination import CoordinationUnavailable

    with EtcdCluster(size=1) as cluster:
        cluster.start()
        options = {"OPTIONS": {"endpoints": cluster.endpoints, "timeout": 1, "dial_timeout": 1},
                   "PREFIX": prefix, "TTL": TTL}
        with override_settings(COORDINATION=options):
            async with lock("down") as held:
                first = held.token
                cluster.members[0].stop()
                stopped = time.monotonic()
                await asyncio.wait_for(held.lost.wait(), TTL + 2)
                took = time.monotonic() - stopped
                print(f"lock lost {took:.2f} s after etcd stopped (TTL {TTL} s)")
                assert took <= TTL + 0.5 and not held.valid
                started = time.monotonic()
                with pytest.raises(CoordinationUnavailable, match="etcd at 127.0.0.1"):
                    await lock("other").acquire()
                failed = time.monotonic() - started
                print(f"a new lock failed {failed:.2f} s into the outage")
                assert failed < 5
            # Released while etcd is down: best effort, no error. etcd back: locks work again.
            cluster.members[0].restart()
            async with lock("down", timeout=10) as again:
                assert again.valid and first is not None and again.token > first
