"""Leader election against real etcd: three real processes campaign, the leader is killed with
SIGKILL (1 and 3 members), callbacks, leader(), resign, and a lease revoked under the leader."""

from __future__ import annotations

import asyncio
import select
import subprocess
import time

import pytest

from microframe.contrib.coordination import Election
from microframe.test import override_settings

from support.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.timeout(90)

TTL = 2


def next_line(procs: list[subprocess.Popen[str]], timeout: float) -> tuple[subprocess.Popen[str], str]:
    """The next line any of ``procs`` prints, and which printed it."""
    deadline = time.monotonic() + timeout
    while True:
        streams = [p.stdout for p in procs if p.poll() is None]
        left = deadline - time.monotonic()
        assert left > 0 and streams, f"no line within {timeout} s"
        ready, _, _ = select.select(streams, [], [], left)
        for stream in ready:
            line = stream.readline()
            if line:
                return next(p for p in procs if p.stdout is stream), line.strip()


def ask_leader(proc: subprocess.Popen[str], others: list[subprocess.Popen[str]]) -> str:
    assert proc.stdin is not None
    proc.stdin.write("leader\n")
    proc.stdin.flush()
    while True:
        who, line = next_line([proc, *others], 10)
        if who is proc and line.startswith("leader "):
            return line.split(" ", 1)[1]


@pytest.mark.parametrize("members", [1, 3])
def test_a_killed_leader_is_replaced_within_the_ttl(request, members, prefix, contenders):
    cluster: EtcdCluster = request.getfixturevalue("etcd" if members == 1 else "etcd3")
    endpoints = ",".join(cluster.endpoints)
    procs = [contenders("campaign", endpoints, prefix, TTL, "jobs", f"c{i}") for i in range(3)]
    leader, line = next_line(procs, 30)
    assert line.startswith("elected "), line
    first = line.split()[1]
    # Every candidate is queued before the kill.
    deadline = time.monotonic() + 20
    while len(cluster.get_prefix(f"{prefix}/elections/jobs/")) < 3:
        assert time.monotonic() < deadline, "the candidates never all queued"
    others = [p for p in procs if p is not leader]
    assert ask_leader(others[0], others) == first
    leader.kill()
    killed = time.monotonic()
    who, line = next_line(others, TTL + 5)
    word, second, at = line.split()
    took = float(at) - killed
    print(f"new leader {took:.2f} s after SIGKILL of the leader ({members} member(s), TTL {TTL} s)")
    assert word == "elected" and second != first
    assert took <= TTL + 1, f"new leader after {took:.2f} s"
    rest = next(p for p in others if p is not who)
    assert ask_leader(rest, others) == second
    assert ask_leader(who, others) == second


async def test_callbacks_resign_and_a_lost_lease(etcd, prefix):
    events: list[str] = []

    async def elected_b() -> None:
        events.append("b elected")

    with override_settings(COORDINATION={"OPTIONS": {"endpoints": etcd.endpoints}, "PREFIX": prefix,
                                         "TTL": 3}):
        a, b = Election("e", "a"), Election("e", "b")
        assert await a.leader() is None
        a.on_elected(lambda: events.append("a elected"))
        a.on_revoked(lambda: events.append("a revoked"))
        b.on_elected(elected_b)
        b.on_revoked(lambda: events.append("b revoked"))
        async with a:
            assert a.is_leader and a.token
            b.start()
            deadline = time.monotonic() + 10
            while len(etcd.get_prefix(f"{prefix}/elections/e/")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert not b.is_leader and await b.leader() == "a"
        # a resigned: b leads at once, with a greater token.
        await asyncio.wait_for(b.campaign(), 5)
        assert events == ["a elected", "a revoked", "b elected"]
        assert await a.leader() == "b"

        # b's lease revoked behind its back: on_revoked, then it campaigns again by itself.
        first_token = b.token
        lease = int(next(iter(etcd.get_prefix(f"{prefix}/elections/e/").values())).lease)
        etcd.etcdctl("lease", "revoke", format(lease, "x"))
        deadline = time.monotonic() + 3 + 2
        while "b revoked" not in events:
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.02)
        assert not b.is_leader
        await asyncio.wait_for(b.campaign(), 5)
        assert b.is_leader and b.token > first_token
        assert events[-2:] == ["b revoked", "b elected"]
        await b.resign()
        assert not b.is_leader and events[-1] == "b revoked"
        assert await b.leader() is None


async def test_a_leader_whose_key_is_deleted_is_revoked_never_two_leaders(etcd, prefix):
    """``etcdctl del`` of the leader's key makes the next candidate lead at once: the old
    leader must stop leading then, not when its (long) lease ends."""
    with override_settings(COORDINATION={"OPTIONS": {"endpoints": etcd.endpoints}, "PREFIX": prefix,
                                         "TTL": 30}):
        a, b = Election("k", "a"), Election("k", "b")
        try:
            await asyncio.wait_for(a.campaign(), 5)
            b.start()
            deadline = time.monotonic() + 5
            while len(etcd.get_prefix(f"{prefix}/elections/k/")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            leader_key = next(k for k, v in etcd.get_prefix(f"{prefix}/elections/k/").items()
                              if v.value == "a")
            etcd.etcdctl("del", leader_key)
            deleted = time.monotonic()
            await asyncio.wait_for(b.campaign(), 5)
            deadline = time.monotonic() + 2
            while a.is_leader:
                assert time.monotonic() < deadline, "a still leads beside b"
                await asyncio.sleep(0.01)
            print(f"a revoked {time.monotonic() - deleted:.3f} s after the deletion")
            assert b.is_leader and await b.leader() == "b"
            # a campaigns again, behind b.
            deadline = time.monotonic() + 5
            while len(etcd.get_prefix(f"{prefix}/elections/k/")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert not a.is_leader
        finally:
            await a.resign()
            await b.resign()
