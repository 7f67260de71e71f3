#!/usr/bin/env python
"""Discovery and balancing at fleet scale: a watching process at 100 to 100,000 instances.

A real etcd, started here on free loopback ports, holds the fleet in the registry's layout:
``<prefix>/<service>/<instance id>`` = ``ServiceInstance.to_json()``, each key under a lease of
its own (10 instances per lease at 100,000: etcd grants a few thousand leases a second; TTL 1 h,
no keep-alives sent: a refresh changes no key, no watcher sees it). This process writes the keys
(aetcd; the fleet in transactions of 128 puts). The process under test is a separate watcher
running the project's discovery, ``DiscoveryCache(EtcdRegistry(...))``: one ``instances()``
call, then one listener subscribed. Both read ``time.monotonic()`` (one clock for the machine).
The watcher's CPU is its own (``time.process_time``, every thread) minus what its listener
spends finding which of the writes a set shows (a walk of the set, timed with
``time.thread_time`` and subtracted).

1. *one change*: N instances registered, the watcher settled and measured idle; then changes
   one at a time, each made ``--gap`` after the previous one was seen (an isolated change: a
   burst is the churn's case), in cycles of three: a new instance registered (a lease, then its
   put), its weight changed (a put), its lease revoked (the key goes). The time from the put or
   revoke returning to the listener's call; the watcher's CPU per change, net of its idle CPU,
   from the write to the listener's call and over the whole run of changes (what a change
   leaves to do afterwards included: a snapshot written later); its idle CPU and RSS; how long
   its first ``instances()`` took.
2. *churn*: re-registrations at a steady rate, open loop. An instance restarts as one does on
   a new host or pod: with a new address and so a new id (the default instance id is
   ``host:port``), its key put under a new lease, then the old instance's lease revoked (a
   graceful stop). The time from each of these writes to the first listener call whose set
   shows it, the time to catch up once the writes stop, and the watcher's CPU as a share of a
   core from the first write until caught up.
3. *pick cost* of each balancer (``make_balancer``), in this process: ``pick(instances,
   exclude)`` with nothing excluded, one instance, and 10 % of them (the same frozenset on
   every pick, as the client hands over its ejections), over many picks; the first pick after
   a new list (when the balancer builds its view of it) apart. ``p2c_ewma`` twice: the pick
   alone, and pick + ``start`` + ``done`` (its work per call).
4. *p2c_ewma fairness*, on a simulated clock: 200 instances, 20 of which answer 10x slower
   (100 ms against 10 ms; calls in flight until they end), at fewer calls per second than
   instances (and at more, for comparison); the slow instances' share of the picks against
   their fair share (10 %).
5. *dead fleet*: 3 live servers (``bench/bare_server.py``) and 997 entries where nothing
   listens (127.0.x.y on a closed port: connections refused at once), all in etcd. A client
   process with the default options (``GreeterClient(service, discovery=cache)``) starts a call
   every 2 ms, each in its own task, for 20 s: its errors second by second, when they fall
   under 1 % for good, the channels it opened, its CPU, its errors by code (and, printed, its
   most frequent messages). The full run does the same on the 3 live servers alone, for
   reference.
6. *file registry*: N instances heartbeating from another process (``FileRegistry``, TTL
   10 s), and the watcher of 1. on that backend: its idle CPU while they beat, and changes as in
   1., made by this process through a ``FileRegistry`` of its own.

    python bench/discovery.py                    # full run, about 5 minutes
    python bench/discovery.py --quick            # about 35 s: small fleets, short windows
    python bench/discovery.py --write            # the full run, written to docs/performance.md
    python bench/discovery.py --scenarios change,picks --max-instances 10000

Targets (issue "Discovery and balancing at fleet scale"): at 10,000 instances a change is seen
<= 10 ms (p99) for <= 1 ms of the watcher's CPU; under churn (1,000 instances, 100
re-registrations/s) p99 <= 200 ms for <= 10 % of a core; a pick costs <= 5 µs at any N;
p2c_ewma's forced picks never give slow instances more than their fair share; with 997 dead
entries out of 1,000, back under 1 % errors within 2 s, and staying there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import heapq
import json
import math
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from registry import etcd_server, percentile

from microframe.discovery.instance import ServiceInstance  # noqa: E402  (harness first)
from microframe.test import free_port  # noqa: E402

from harness import DOC, ROOT, BenchError
from harness.report import write_block
from harness.sampling import CpuWindow, vm_rss_kb
from harness.servers import Config, ServerUnderTest, child_env

BEGIN_MARK = "<!-- bench:discovery:begin -->"
END_MARK = "<!-- bench:discovery:end -->"
#: The section of docs/performance.md that ``--write`` adds after "## Registry propagation"
#: when it is not there yet.
SECTION = f"""## Discovery at fleet scale

What discovery and the balancers cost at 100 to 100,000 instances: `bench/discovery.py` writes
a fleet into a real etcd (one key per instance, under a lease, the registry's layout) and
measures, in a separate watcher process running `DiscoveryCache` on `EtcdRegistry`, how fast
a change reaches a listener and what it costs the watcher; then the balancers' cost per pick, in
process; `p2c_ewma`'s share of picks to slow instances, on a simulated clock; a client's errors
with 997 dead entries out of 1,000; and the file registry's watcher among heartbeating
instances. The method of each measurement is in the script's docstring.

{BEGIN_MARK}
{END_MARK}

"""

PREFIX = "/bench/discovery"
LEASE_TTL = 3600
TXN_OPS = 128  # etcd's default --max-txn-ops
PARALLEL = 256  # requests in flight while the fleet is written
ZONES = ("zone-a", "zone-b", "zone-c")
BALANCERS = ("random", "round_robin", "weighted_random", "p2c_ewma")
SCENARIOS = ("change", "churn", "picks", "fairness", "dead", "file")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run measures: the full and the quick defaults."""

    sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
    cycles: int = 30  # change cycles (add, reweight, remove) per fleet size...
    cycles_largest: int = 10  # ... at 100,000 instances, where a change takes longest
    idle: float = 5.0  # seconds of the watcher's idle window
    gap: float = 0.2  # seconds between a change seen and the next change
    churn: tuple[tuple[int, float, float], ...] = ((1_000, 100.0, 10.0), (10_000, 10.0, 10.0))
    pick_sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
    picks: int = 60_000
    fairness_runs: int = 5
    dead_seconds: float = 20.0
    dead_reference: bool = True  # the same load on the live servers alone
    file_sizes: tuple[int, ...] = (100, 1_000)
    file_cycles: int = 10
    file_idle: float = 10.0


FULL = Plan()
QUICK = Plan(
    sizes=(1_000,),
    cycles=4,
    idle=1.0,
    churn=((1_000, 100.0, 2.0),),
    pick_sizes=(100, 10_000),
    picks=7_000,
    fairness_runs=1,
    dead_seconds=3.0,
    dead_reference=False,
    file_sizes=(100,),
    file_cycles=3,
    file_idle=1.5,
)


def instance(service: str, index: int, *, block: int = 10, weight: int = 100) -> ServiceInstance:
    """Instance ``index`` of a fleet: its own address in ``<block>.0.0.0/8``, its address as its
    id (as a registered server's default), a zone, a version."""
    host = f"{block}.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    return ServiceInstance(
        id=f"{host}:8080", name=service, host=host, port=8080, weight=weight,
        metadata={"zone": ZONES[index % len(ZONES)]}, version="1.4.2",
    )  # fmt: skip


def fmt_n(n: int) -> str:
    return f"{n:,}"


def judged(ok: bool, figure: str) -> str:
    """A target's verdict, with the figure when it is missed."""
    return "met" if ok else f"**missed** ({figure})"


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


# The process under test ----------------------------------------------------------------------

WATCHER = r"""
import asyncio, json, os, sys, time

config = json.loads(sys.argv[1])
own = 0.0  # CPU of this script's own checks, left out of the figures
reading = 0.0  # when the command being handled began to be read (its thread time)
pending = {}  # index -> (kind, id, weight): what a set is awaited to show
count = 0


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def listener(service, instances, *more):
    global own
    begun = time.thread_time()
    now = time.monotonic()
    satisfied = []
    if pending:
        weights = {i.id: i.weight for i in instances}
        for index, (kind, key, weight) in list(pending.items()):
            if kind == "present":
                ok = key in weights
            elif kind == "absent":
                ok = key not in weights
            else:
                ok = weights.get(key) == weight
            if ok:
                satisfied.append(index)
                del pending[index]
    emit({"t": now, "n": len(instances), "sat": satisfied})
    own += time.thread_time() - begun


def command(request):
    global count
    if request["cmd"] == "expect":
        emit({"base": count})
        for item in request["items"]:
            pending[count] = tuple(item)
            count += 1
    elif request["cmd"] == "cpu":
        mine = own + time.thread_time() - reading
        emit({"cpu": time.process_time(), "own": mine, "t": time.monotonic()})


async def main():
    from microframe.discovery.cache import DiscoveryCache
    from microframe.discovery.registry import RegistryUnavailable

    if config["backend"] == "etcd":
        from microframe.contrib.registry.etcd import EtcdRegistry as Backend
    else:
        from microframe.contrib.registry.file import FileRegistry as Backend
    service = config["service"]
    cache = DiscoveryCache(Backend(**config["options"]), config["cache_dir"])
    begun = time.monotonic()
    unavailable = 0
    while True:  # a large first read may outlast the cache's first_read_timeout
        try:
            found = await cache.instances(service)
            break
        except RegistryUnavailable:
            unavailable += 1
            if time.monotonic() - begun > config["deadline"]:
                raise
    first = time.monotonic() - begun
    cache.subscribe(service, listener)
    emit({"ready": len(found), "first": first, "unavailable": unavailable})
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    buffer = b""

    def readable():
        global own, reading
        nonlocal buffer
        started = reading = time.thread_time()
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            loop.remove_reader(fd)
            done.set()
            return
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                command(json.loads(line))
        own += time.thread_time() - started

    loop.add_reader(fd, readable)
    await done.wait()
    await cache.close()


asyncio.run(main())
"""


@dataclasses.dataclass(frozen=True)
class Cpu:
    """The watcher's CPU seconds so far, its own checks' share of them, and when."""

    cpu: float
    own: float
    t: float

    def since(self, before: Cpu, idle_cores: float = 0.0) -> float:
        """CPU seconds of discovery since ``before``, less ``idle_cores`` over the window."""
        return (self.cpu - before.cpu) - (self.own - before.own) - idle_cores * (self.t - before.t)


class Watcher:
    """The process under test: a ``DiscoveryCache`` following one service, with a listener
    that says which awaited changes each new set shows (JSON lines; a thread reads them)."""

    def __init__(
        self, workdir: Path, service: str, backend: str, options: dict[str, Any], deadline: float
    ) -> None:
        self.log_path = workdir / f"watcher-{service}.log"
        config = {
            "backend": backend,
            "options": options,
            "service": service,
            "cache_dir": str(workdir / f"cache-{service}"),
            "deadline": deadline,
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCHER, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=ROOT, env=child_env(workdir), start_new_session=True,
        )  # fmt: skip
        self.seen: dict[int, float] = {}  # awaited change -> when the listener saw it
        self.calls = 0  # listener calls
        self._changed = threading.Condition()
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self._reply(deadline + 10)
        except BaseException:
            self.close()
            raise
        self.instances = int(ready["ready"])
        self.first_read = float(ready["first"])
        self.first_unavailable = int(ready["unavailable"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not one of the script's lines
            if "sat" in event:
                with self._changed:
                    self.calls += 1
                    for index in event["sat"]:
                        self.seen[index] = float(event["t"])
                    self._changed.notify_all()
            else:
                self._replies.put(event)
        self._replies.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the watcher did not answer within {timeout:g} s") from None
        if reply is None:
            self.proc.wait(5)
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise BenchError(
                f"the watcher exited with code {self.proc.returncode}:\n" + "\n".join(tail)
            )
        return reply

    def _ask(self, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it exited: _reply says how
        return self._reply(timeout)

    def expect(self, items: list[tuple[str, str, int]]) -> int:
        """Await ``(kind, id, weight)`` changes ("present", "absent", "weight"); return the
        index of the first (the others follow)."""
        return int(self._ask({"cmd": "expect", "items": items})["base"])

    def cpu(self) -> Cpu:
        reply = self._ask({"cmd": "cpu"})
        return Cpu(float(reply["cpu"]), float(reply["own"]), float(reply["t"]))

    def wait_seen(self, indices: list[int], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: all(i in self.seen for i in indices), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


# The fleet's side of etcd --------------------------------------------------------------------


class EtcdWriter:
    """Leases granted and keys written as fast as etcd takes them (aetcd)."""

    def __init__(self, endpoint: str) -> None:
        import aetcd

        host, port = endpoint.rsplit(":", 1)
        self.client = aetcd.Client(
            host, int(port), timeout=30,
            options={"grpc.max_receive_message_length": 64 << 20},
        )  # fmt: skip

    @staticmethod
    def key(found: ServiceInstance) -> bytes:
        return f"{PREFIX}/{found.name}/{found.id}".encode()

    async def lease(self) -> int:
        return int((await self.client.lease(LEASE_TTL)).id)

    async def leases(self, count: int) -> list[int]:
        gate = asyncio.Semaphore(PARALLEL)

        async def one() -> int:
            async with gate:
                return await self.lease()

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def register_all(self, fleet: list[ServiceInstance], per_lease: int = 1) -> list[int]:
        """Put every instance under a lease (of its own, or shared by ``per_lease`` of them:
        etcd grants a few thousand leases a second); return the leases, in order."""
        granted = await self.leases(-(-len(fleet) // per_lease))
        leases = [granted[i // per_lease] for i in range(len(fleet))]
        put = self.client.transactions.put
        gate = asyncio.Semaphore(PARALLEL // 16)

        async def batch(start: int) -> None:
            ops = [
                put(self.key(found), found.to_json().encode(), lease=lease)
                for found, lease in zip(
                    fleet[start : start + TXN_OPS], leases[start : start + TXN_OPS], strict=True
                )
            ]
            async with gate:
                await self.client.transaction(compare=[], success=ops, failure=[])

        await asyncio.gather(*(batch(start) for start in range(0, len(fleet), TXN_OPS)))
        return leases

    async def put(self, found: ServiceInstance, lease: int) -> None:
        await self.client.put(self.key(found), found.to_json().encode(), lease=lease)

    async def revoke(self, lease: int) -> None:
        await self.client.revoke_lease(lease)

    async def close(self) -> None:
        await self.client.close()


def lease_share(n: int) -> int:
    """Instances per lease in a fleet of ``n``: one each, but for 100,000 (10 each, 10,000
    leases: granting 100,000 takes etcd a minute here, and a watcher sees keys, not leases)."""
    return 10 if n >= 100_000 else 1


def etcd_options(endpoint: str) -> dict[str, Any]:
    return {"endpoints": [endpoint], "prefix": PREFIX}


def settle_seconds(n: int) -> float:
    return 0.5 + n / 50_000


def read_deadline(n: int) -> float:
    """Seconds a watcher may take to read ``n`` instances, or to see one change among them."""
    return 20 + n / 1_000


# 1. and 6. One change at a time ----------------------------------------------------------------

Step = tuple[str, str, int, Callable[[], Awaitable[None]]]


def change_steps(
    service: str,
    cycles: int,
    add: Callable[[ServiceInstance], Awaitable[None]],
    reweight: Callable[[ServiceInstance], Awaitable[None]],
    remove: Callable[[ServiceInstance], Awaitable[None]],
) -> list[Step]:
    """``cycles`` times: a new instance, its weight changed to 50, the instance gone."""
    steps: list[Step] = []
    for k in range(cycles):
        new = instance(service, k, block=11)
        lighter = dataclasses.replace(new, weight=50)
        steps += [
            ("present", new.id, 0, lambda new=new: add(new)),
            ("weight", new.id, 50, lambda lighter=lighter: reweight(lighter)),
            ("absent", new.id, 0, lambda new=new: remove(new)),
        ]
    return steps


@dataclasses.dataclass
class ChangeResult:
    instances: int
    seen: list[float]
    cpu_until_seen: float  # per change, from the write to the listener's call
    cpu_per_change: float  # per change, over the whole run of changes (deferred work too)
    idle_cores: float
    rss_kb: int
    first_read: float
    first_unavailable: int
    write_seconds: float = 0.0


async def measure_changes(
    watcher: Watcher, steps: list[Step], idle: float, gap: float, deadline: float
) -> tuple[list[float], float, float, float]:
    """Measure the watcher idle for ``idle`` s, then make the changes one at a time, each
    ``gap`` s after the previous one was seen; return the times from each write returning to
    its listener call, the watcher's CPU per change until seen and over the whole run of
    changes (both net of its idle CPU), and its idle CPU in cores."""
    before = watcher.cpu()
    await asyncio.sleep(idle)
    after = watcher.cpu()
    idle_cores = after.since(before) / (after.t - before.t)
    seen = []
    until_seen = 0.0
    first = watcher.cpu()
    for kind, key, weight, write in steps:
        index = watcher.expect([(kind, key, weight)])
        await asyncio.sleep(gap)
        before = watcher.cpu()
        await write()
        returned = time.monotonic()
        if not await asyncio.to_thread(watcher.wait_seen, [index], deadline):
            raise BenchError(f"the watcher did not see {kind} {key} within {deadline:g} s")
        seen.append(watcher.seen[index] - returned)
        until_seen += watcher.cpu().since(before, idle_cores)
    await asyncio.sleep(gap)  # what the last change left to do
    last = watcher.cpu()
    whole = last.since(first, idle_cores)
    return seen, until_seen / len(steps), whole / len(steps), idle_cores


async def change_result(
    watcher: Watcher, n: int, steps: list[Step], idle: float, gap: float, written: float
) -> ChangeResult:
    """Let the watcher of ``n`` instances settle, read its RSS, then :func:`measure_changes`
    with ``steps``: the row of the change table (``written``: seconds the fleet took to
    write)."""
    await asyncio.sleep(settle_seconds(n))
    rss = vm_rss_kb(watcher.pid) or 0
    seen, until_seen, per_change, idle_cores = await measure_changes(
        watcher, steps, idle, gap, read_deadline(n)
    )
    return ChangeResult(
        n, seen, until_seen, per_change, idle_cores, rss, watcher.first_read,
        watcher.first_unavailable, written,
    )  # fmt: skip


async def etcd_change(endpoint: str, workdir: Path, n: int, plan: Plan) -> ChangeResult:
    service = f"fleet{n}"
    writer = EtcdWriter(endpoint)
    try:
        began = time.monotonic()
        await writer.register_all([instance(service, i) for i in range(n)], lease_share(n))
        written = time.monotonic() - began
        leases: dict[str, int] = {}

        async def add(new: ServiceInstance) -> None:
            leases[new.id] = await writer.lease()  # before the put: not in the time measured
            await writer.put(new, leases[new.id])

        async def reweight(changed: ServiceInstance) -> None:
            await writer.put(changed, leases[changed.id])

        async def remove(gone: ServiceInstance) -> None:
            await writer.revoke(leases.pop(gone.id))

        watcher = Watcher(workdir, service, "etcd", etcd_options(endpoint), read_deadline(n))
        try:
            cycles = plan.cycles_largest if n >= 100_000 else plan.cycles
            steps = change_steps(service, cycles, add, reweight, remove)
            return await change_result(watcher, n, steps, plan.idle, plan.gap, written)
        finally:
            watcher.close()
    finally:
        await writer.close()


def ms(values: list[float]) -> str:
    """p50 | p99 | max, in ms."""
    return (
        f"{statistics.median(values) * 1000:.1f} | {percentile(values, 99) * 1000:.1f} | "
        f"{max(values) * 1000:.1f}"
    )


def first_note(unavailable: int) -> str:
    """What the first ``instances()`` raised before it answered, if anything."""
    return f" (after {unavailable} × RegistryUnavailable)" if unavailable else ""


def change_table(results: list[ChangeResult], etcd: bool) -> str:
    lines = [
        "| instances | changes | seen p50 ms | p99 ms | max ms | watcher CPU per change ms: "
        "until seen | with what follows | idle CPU % of a core | RSS MB "
        "| first `instances()` s | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        target = "(for information)"
        if etcd and r.instances == 10_000:
            p99 = percentile(r.seen, 99)
            target = "p99 <= 10 ms, <= 1 ms CPU: " + judged(
                p99 <= 0.010 and r.cpu_per_change <= 0.001,
                f"p99 {p99 * 1000:.1f} ms, {r.cpu_per_change * 1000:.2f} ms CPU",
            )
        lines.append(
            f"| {fmt_n(r.instances)} | {len(r.seen)} | {ms(r.seen)} | "
            f"{r.cpu_until_seen * 1000:.2f} | {r.cpu_per_change * 1000:.2f} | "
            f"{r.idle_cores * 100:.2f} | {r.rss_kb / 1024:.0f} | "
            f"{r.first_read:.2f}{first_note(r.first_unavailable)} | {target} |"
        )
    return "\n".join(lines)


def scenario_change(endpoint: str, workdir: Path, plan: Plan, sizes: tuple[int, ...]) -> str:
    results = []
    for n in sizes:
        result = asyncio.run(etcd_change(endpoint, workdir, n, plan))
        print(
            f"  change at {fmt_n(n)}: fleet written in {result.write_seconds:.1f} s, "
            f"p99 {percentile(result.seen, 99) * 1000:.1f} ms",
            flush=True,
        )
        results.append(result)
    return (
        "**One change at a time** (etcd; cycles of: a new instance, its weight changed, its "
        f"lease revoked; each made {plan.gap:g} s after the previous one was seen; time from "
        "the write returning to the listener's call; watcher CPU per change net of its idle "
        "CPU, until the listener's call and over the whole run of changes, what they left to "
        "do included"
        + (", 10 instances per lease at 100,000" if 100_000 in sizes else "")
        + "):\n\n"
        + change_table(results, etcd=True)
    )


# 2. Churn -----------------------------------------------------------------------------------


@dataclasses.dataclass
class ChurnResult:
    instances: int
    rate: float
    restarts: int
    seconds: float
    delays: list[float]
    missing: int
    catch_up: float | None
    cores: float
    calls: int
    lag: float


async def churn_at(
    endpoint: str, workdir: Path, n: int, rate: float, seconds: float
) -> ChurnResult:
    service = f"churn{n}"
    restarts = round(rate * seconds)
    if restarts > n:
        raise BenchError(f"{restarts} restarts of {n} instances: each restarts once at most")
    writer = EtcdWriter(endpoint)
    try:
        fleet = [instance(service, i) for i in range(n)]
        leases = await writer.register_all(fleet)
        new_leases = await writer.leases(restarts)  # granted ahead: a grant is no key event
        victims = random.Random(n).sample(range(n), restarts)
        newcomers = [instance(service, j, block=12) for j in range(restarts)]
        watcher = Watcher(workdir, service, "etcd", etcd_options(endpoint), read_deadline(n))
        try:
            await asyncio.sleep(settle_seconds(n))
            items = []
            for j in range(restarts):
                items += [("present", newcomers[j].id, 0), ("absent", fleet[victims[j]].id, 0)]
            base = watcher.expect(items)
            returned: dict[int, float] = {}

            async def restart(j: int) -> None:
                await writer.put(newcomers[j], new_leases[j])
                returned[base + 2 * j] = time.monotonic()
                await writer.revoke(leases[victims[j]])
                returned[base + 2 * j + 1] = time.monotonic()

            calls = watcher.calls
            before = watcher.cpu()
            start = time.monotonic()
            lag = 0.0
            tasks = []
            for j in range(restarts):
                due = start + j / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag = max(lag, time.monotonic() - due)
                tasks.append(asyncio.create_task(restart(j)))
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), seconds + 30)
            except TimeoutError:
                raise BenchError(
                    f"the writes of the churn did not end within {seconds + 30:g} s"
                ) from None
            last_write = max(returned.values())
            indices = list(range(base, base + len(items)))
            caught_up = await asyncio.to_thread(watcher.wait_seen, indices, 60)
            after = watcher.cpu()
            delays = [watcher.seen[i] - returned[i] for i in indices if i in watcher.seen]
            catch_up = max(watcher.seen[i] for i in indices) - last_write if caught_up else None
            return ChurnResult(
                n, rate, restarts, seconds, delays, len(items) - len(delays),
                None if catch_up is None else max(0.0, catch_up),
                after.since(before) / (after.t - before.t), watcher.calls - calls, lag,
            )  # fmt: skip
        finally:
            watcher.close()
    finally:
        await writer.close()


def scenario_churn(endpoint: str, workdir: Path, plan: Plan, max_n: int) -> str:
    lines = [
        "| instances | re-registrations/s | for s | writes seen | p50 ms | p99 ms | max ms "
        "| listener calls | caught up after the last write, ms | watcher CPU % of a core "
        "| target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    late = []
    for n, rate, seconds in plan.churn:
        if n > max_n:
            continue
        r = asyncio.run(churn_at(endpoint, workdir, n, rate, seconds))
        late.append(f"{r.lag * 1000:.0f} ms at {fmt_n(n)}")
        p99 = percentile(r.delays, 99) if r.delays else math.inf
        seen = f"{len(r.delays)} of {len(r.delays) + r.missing}"
        catch = "not within 60 s" if r.catch_up is None else f"{r.catch_up * 1000:.0f}"
        figures = ms(r.delays) if r.delays else "– | – | –"
        target = "p99 <= 200 ms, <= 10 % of a core: " + judged(
            p99 <= 0.200 and r.cores <= 0.10 and not r.missing,
            f"p99 {p99 * 1000:.0f} ms, {r.cores * 100:.0f} %"
            + (f", {r.missing} writes never seen" if r.missing else ""),
        )
        lines.append(
            f"| {fmt_n(n)} | {rate:g} | {seconds:g} | {seen} | {figures} | {r.calls} | {catch} "
            f"| {r.cores * 100:.1f} | {target} |"
        )
    return (
        "**Churn** (etcd; a re-registration: the restarted instance's new key, new id, under a "
        "new lease, then the old instance's lease revoked, open loop; time from each write "
        "returning to the first listener call whose set shows it):\n\n"
        + "\n".join(lines)
        + f"\n\nThe writer started re-registrations late by at most {', '.join(late)}."
    )


# 3. Pick cost --------------------------------------------------------------------------------


class FixedRegistry:
    """A registry holding one set of instances, for a ``DiscoveryCache`` in this process: the
    pick cost is measured on the list discovery hands a client, whatever its type."""

    def __init__(self, fleet: list[ServiceInstance]) -> None:
        self.fleet = fleet

    async def watch(self, service: str) -> Any:
        yield list(self.fleet)
        await asyncio.Event().wait()

    async def instances(self, service: str) -> list[ServiceInstance]:
        return list(self.fleet)

    async def register(self, instance: ServiceInstance) -> None:
        pass

    async def deregister(self, instance: ServiceInstance) -> None:
        pass

    async def services(self) -> list[str]:
        return [self.fleet[0].name] if self.fleet else []

    async def close(self) -> None:
        pass


async def discovered(fleet: list[ServiceInstance], workdir: Path) -> Any:
    """The list of ``fleet`` a ``DiscoveryCache`` hands out."""
    from microframe.discovery.cache import DiscoveryCache

    cache = DiscoveryCache(FixedRegistry(fleet), workdir / "cache-picks")
    try:
        return await cache.instances(fleet[0].name)
    finally:
        await cache.close()


RUNS = 7  # runs of picks per figure, the best kept


def pick_cost(
    balancer: Any, listed: Any, exclude: frozenset[str], picks: int, calls: bool
) -> tuple[float, float]:
    """Seconds per pick, the best of 7 runs of ``picks // 7`` (the least disturbed on a shared
    machine, as ``timeit``), and of a first pick after a new list (median of 5). The balancer
    has seen a call to every instance first (a client's steady state: its statistics made).
    ``calls``: each pick with its ``start`` and ``done``."""
    for found in listed:
        balancer.done(found, balancer.start(found), True)
    firsts = []
    lists = []  # kept: freeing the list before is no part of a first pick
    for _ in range(5):
        fresh = copy.copy(listed)  # a new list, of its kind: the balancer builds a new view
        lists.append(fresh)
        began = time.perf_counter()
        balancer.pick(fresh, exclude)
        firsts.append(time.perf_counter() - began)
    pick, start, done = balancer.pick, balancer.start, balancer.done
    rounds = range(max(1, picks // RUNS))
    for _ in rounds[:1000]:  # warm: the view for the exclusion, the caches
        pick(fresh, exclude)
    best = math.inf
    for _ in range(RUNS):
        if calls:
            began = time.perf_counter()
            for _ in rounds:
                chosen = pick(fresh, exclude)
                done(chosen, start(chosen), True)
        else:
            began = time.perf_counter()
            for _ in rounds:
                pick(fresh, exclude)
        best = min(best, (time.perf_counter() - began) / len(rounds))
    return best, statistics.median(firsts)


def scenario_picks(workdir: Path, plan: Plan, max_n: int) -> str:
    from microframe.client.balancers import make_balancer

    window = CpuWindow([])
    sizes = [n for n in plan.pick_sizes if n <= max_n]
    variants = [(name, False) for name in BALANCERS] + [("p2c_ewma", True)]
    cells: dict[tuple[str, bool, str], list[str]] = {}
    worst = (0.0, "")
    worst_calls = 0.0
    for n in sizes:
        fleet = [instance("picks", i, weight=50 + i % 100) for i in range(n)]
        listed = asyncio.run(discovered(fleet, workdir))
        ids = [found.id for found in fleet]
        exclusions = {
            "none": frozenset(),
            "one": frozenset(ids[n // 2 : n // 2 + 1]),
            "10 %": frozenset(ids[::10]),
        }
        for name, calls in variants:
            for label, exclude in exclusions.items():
                steady, first = pick_cost(make_balancer(name), listed, exclude, plan.picks, calls)
                cells.setdefault((name, calls, label), []).append(
                    f"{steady * 1e6:.2f} / {first * 1e6:,.0f}"
                )
                if calls:
                    worst_calls = max(worst_calls, steady)
                elif steady > worst[0]:
                    worst = (steady, f"{name}, {label} excluded, {fmt_n(n)} instances")
    lines = [
        "| balancer | excluded | " + " | ".join(f"{fmt_n(n)} instances" for n in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for (name, calls, label), row in cells.items():
        shown = f"`{name}`, pick + start + done" if calls else f"`{name}`"
        lines.append(f"| {shown} | {label} | " + " | ".join(row) + " |")
    verdict = judged(worst[0] <= 5e-6, f"{worst[0] * 1e6:.2f} µs: {worst[1]}")
    others = window.close()[3]
    return (
        "**Pick cost** (in process, on the list a `DiscoveryCache` hands out, after a call "
        f"to every instance; `time.perf_counter`, best of {RUNS} runs of "
        f"{fmt_n(plan.picks // RUNS)} picks; µs per pick / µs of the first pick after a new "
        "list, when the balancer builds its view of it; excluded: the same frozenset on every "
        f"pick; other programs used {others:.2f} cores meanwhile):"
        "\n\n" + "\n".join(lines) + "\n\n"
        f"Worst pick {worst[0] * 1e6:.2f} µs (target <= 5 µs at any N: {verdict}); "
        f"`p2c_ewma` pick + start + done at most {worst_calls * 1e6:.2f} µs."
    )


# 4. p2c_ewma fairness --------------------------------------------------------------------------


def slow_share(
    n: int, slow: int, rate: float, seconds: float, seed: int, warmup: float
) -> tuple[float, float]:
    """The slow instances' share of ``P2CEwmaBalancer``'s picks: over the whole run and after
    ``warmup`` simulated seconds. Calls overlap as they would (in flight until done)."""
    from microframe.client.balancers import P2CEwmaBalancer

    now = [0.0]
    balancer = P2CEwmaBalancer(clock=lambda: now[0], rng=random.Random(seed))
    fleet = [instance("fair", i) for i in range(n)]
    slow_ids = {found.id for found in random.Random(seed + 1).sample(fleet, slow)}
    fast_latency = 0.010
    in_flight: list[tuple[float, int, ServiceInstance, float]] = []
    picks = slow_picks = late_picks = late_slow = 0
    for k in range(int(rate * seconds)):
        at = k / rate
        while in_flight and in_flight[0][0] <= at:
            ends, _, chosen, token = heapq.heappop(in_flight)
            now[0] = ends
            balancer.done(chosen, token, True)
        now[0] = at
        chosen = balancer.pick(fleet)
        assert chosen is not None
        token = balancer.start(chosen)
        is_slow = chosen.id in slow_ids
        latency = fast_latency * (10 if is_slow else 1)
        heapq.heappush(in_flight, (at + latency, k, chosen, token))
        picks += 1
        slow_picks += is_slow
        if at >= warmup:
            late_picks += 1
            late_slow += is_slow
    return slow_picks / picks, late_slow / max(1, late_picks)


def scenario_fairness(plan: Plan) -> str:
    n, slow, seconds, warmup = 200, 20, 60.0, 10.0
    fair = slow / n
    lines = [
        "| calls per second | instances | slow (10x latency) | slow instances' share of picks "
        f"| after the first {warmup:g} s | fair share | target |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rate in (50.0, 1_000.0):
        runs = [
            slow_share(n, slow, rate, seconds, seed, warmup) for seed in range(plan.fairness_runs)
        ]
        whole = statistics.mean(r[0] for r in runs)
        late = statistics.mean(r[1] for r in runs)
        top = max(max(r) for r in runs)
        target = "(for information)"
        if rate < n:
            target = "<= the fair share: " + judged(top <= fair, f"up to {top * 100:.1f} %")
        lines.append(
            f"| {rate:g} | {n} | {slow} | {whole * 100:.1f} % | {late * 100:.1f} % | "
            f"{fair * 100:.0f} % | {target} |"
        )
    runs_said = f"mean of {plan.fairness_runs} runs" if plan.fairness_runs > 1 else "one run"
    return (
        f"**`p2c_ewma` fairness** (simulated clock, {seconds:g} s of calls at a steady rate, "
        f"each in flight for its latency: 10 ms, 100 ms on the slow instances; {runs_said}; "
        "the verdict is on the worst run, whole or after the first seconds):\n\n" + "\n".join(lines)
    )


# 5. Dead fleet -------------------------------------------------------------------------------

CALLER = r"""
import asyncio, json, re, sys, time
from collections import Counter

config = json.loads(sys.argv[1])


async def main():
    from microframe.client.channels import get_channel_pool
    from microframe.contrib.registry.etcd import EtcdRegistry
    from microframe.core.exceptions import RpcError
    from microframe.discovery.cache import DiscoveryCache

    from example.generate import hello_pb2
    from example.generate.hello_client import GreeterClient

    service = config["service"]
    registry = EtcdRegistry(endpoints=[config["endpoint"]], prefix=config["prefix"])
    cache = DiscoveryCache(registry, config["cache_dir"])
    listed = len(await cache.instances(service))
    client = GreeterClient(service, discovery=cache)
    request = hello_pb2.HelloRequest(name="world")
    results = []
    messages = Counter()

    async def call(offset):
        try:
            await client.SayHello(request)
            code = "OK"
        except RpcError as err:
            code = err.code.name
            text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDRESS", str(err.message))
            messages[f"{code}: {text[:90]}"] += 1
        except Exception as err:
            code = type(err).__name__
            messages[f"{code}: {str(err)[:90]}"] += 1
        results.append((offset, code))

    rate, seconds = config["rate"], config["seconds"]
    tasks = set()
    lag = 0.0
    cpu = time.process_time()
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        lag = max(lag, now - due)
        task = asyncio.create_task(call(now - start))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent = time.monotonic() - start
    if tasks:
        await asyncio.wait(set(tasks), timeout=config["drain"])
    wall = time.monotonic() - start
    print(json.dumps({
        "listed": listed, "results": results, "sent_seconds": sent, "lag": lag,
        "unfinished": len(tasks), "cores": (time.process_time() - cpu) / wall,
        "channels": get_channel_pool().opened, "messages": messages.most_common(8),
    }), flush=True)
    await cache.close()


from microframe.conf import settings

settings.configure()
asyncio.run(main())
"""


def recovered_at(per_second: list[tuple[int, int]], bound: float = 0.01) -> int | None:
    """The first second from which every second has errors under ``bound`` (None: never)."""
    at = None
    for second, (calls, errors) in enumerate(per_second):
        if calls and errors / calls < bound:
            at = second if at is None else at
        else:
            at = None
    return at


@dataclasses.dataclass
class CallerResult:
    """What the client process of the dead-fleet scenario saw."""

    listed: int
    calls: int
    per_second: list[tuple[int, int]]  # (calls started, errors) in each second
    codes: Counter[str]
    unfinished: int
    rate: float
    channels: int
    cores: float
    messages: list[tuple[str, int]]

    @property
    def errors(self) -> int:
        return sum(self.codes.values())


def run_caller(
    endpoint: str, workdir: Path, service: str, entries: list[ServiceInstance], plan: Plan
) -> CallerResult:
    """Register ``entries`` as ``service``, then load them from a client process."""

    async def register() -> None:
        writer = EtcdWriter(endpoint)
        try:
            await writer.register_all(entries)
        finally:
            await writer.close()

    asyncio.run(register())
    config = {
        "endpoint": endpoint, "prefix": PREFIX, "service": service, "rate": DEAD_RATE,
        "seconds": plan.dead_seconds, "drain": 10.0,
        "cache_dir": str(workdir / f"cache-{service}"),
    }  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CALLER, json.dumps(config)],
            capture_output=True, text=True, cwd=ROOT, env=child_env(workdir),
            timeout=plan.dead_seconds + 60,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"the client of {service} did not finish in time") from err
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"the client of {service} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds = math.ceil(plan.dead_seconds)
    per_second = [[0, 0] for _ in range(seconds)]
    codes: Counter[str] = Counter()
    for offset, code in out["results"]:
        bucket = per_second[min(seconds - 1, int(offset))]
        bucket[0] += 1
        if code != "OK":
            bucket[1] += 1
            codes[code] += 1
    unfinished = int(out["unfinished"])
    calls = len(out["results"]) + unfinished
    return CallerResult(
        int(out["listed"]), calls, [(c, e) for c, e in per_second], codes, unfinished,
        calls / out["sent_seconds"], int(out["channels"]), float(out["cores"]),
        [(m, int(c)) for m, c in out["messages"]],
    )  # fmt: skip


DEAD_RATE = 500.0


def scenario_dead(endpoint: str, workdir: Path, plan: Plan) -> str:
    live, dead = 3, 997
    bare = Config("live", "bare grpc.aio Greeter", "bare", loop="asyncio")
    servers: list[ServerUnderTest] = []
    with contextlib.ExitStack() as stack:
        for _ in range(live):
            server = ServerUnderTest(bare, workdir)
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait_ready()
        closed = free_port()  # nothing listens on it, on any loopback address

        def fleet(service: str, dead: int) -> list[ServiceInstance]:
            entries = [
                ServiceInstance(
                    id=f"127.0.0.1:{s.port}", name=service, host="127.0.0.1", port=s.port
                )
                for s in servers
            ]
            for i in range(dead):
                host = f"127.0.{1 + i // 250}.{1 + i % 250}"
                entries.append(
                    ServiceInstance(id=f"{host}:{closed}", name=service, host=host, port=closed)
                )
            return entries

        runs = [(f"{live} live + {dead} dead", run_caller(
            endpoint, workdir, "deadfleet", fleet("deadfleet", dead), plan
        ))]  # fmt: skip
        if plan.dead_reference:
            runs.append((f"{live} live, for reference", run_caller(
                endpoint, workdir, "livefleet", fleet("livefleet", 0), plan
            )))  # fmt: skip
    lines = [
        "| instances | calls started | per s | errors | under 1 % errors from | channels opened "
        "| client CPU, cores | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in runs:
        back = recovered_at(r.per_second)
        back_said = "never" if back is None else f"{back} s"
        target = "(for information)"
        if "dead" in label:
            target = "< 1 % within 2 s, staying there: " + judged(
                back is not None and back <= 2 and not r.unfinished,
                back_said + (f", {r.unfinished} calls unfinished" if r.unfinished else ""),
            )
        lines.append(
            f"| {label} ({r.listed} listed) | {fmt_n(r.calls)} | {r.rate:.0f} | "
            f"{r.errors / max(1, r.calls) * 100:.1f} % | {back_said} | {r.channels} | "
            f"{r.cores:.2f} | {target} |"
        )
        print(f"  {label}, the most frequent errors:", flush=True)
        for message, count in r.messages:
            print(f"    {count:6d}  {message}", flush=True)
    r = runs[0][1]
    by_second = ", ".join(f"{e / c * 100:.0f}" if c else "–" for c, e in r.per_second)
    by_code = ", ".join(f"{code} {fmt_n(n)}" for code, n in r.codes.most_common()) or "none"
    return (
        f"**Dead fleet** (etcd; a client process, default options, starts a call every "
        f"{1000 / DEAD_RATE:g} ms for {plan.dead_seconds:g} s, each in its own task; dead "
        "entries refuse connections at once):\n\n"
        + "\n".join(lines)
        + f"\n\nWith the dead entries, errors per second, %: {by_second}. By code: {by_code}"
        + (
            f"; {r.unfinished} calls unfinished 10 s after the last one started"
            if r.unfinished
            else ""
        )  # fmt: skip
        + "."
    )


# 6. The file registry --------------------------------------------------------------------------

HEARTBEATS = r"""
import asyncio, json, sys


async def main():
    from microframe.contrib.registry.file import FileRegistry
    from microframe.discovery.instance import ServiceInstance

    config = json.loads(sys.argv[1])
    registry = FileRegistry(config["directory"], ttl=config["ttl"])
    with open(config["fleet"]) as f:
        for item in json.load(f):
            await registry.register(ServiceInstance.from_dict(item))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await registry.close()


asyncio.run(main())
"""


async def file_change(workdir: Path, n: int, plan: Plan) -> ChangeResult:
    from microframe.contrib.registry.file import FileRegistry

    service = f"files{n}"
    directory = workdir / "file-registry"
    ttl = 10.0
    fleet_path = workdir / f"{service}.json"
    fleet_path.write_text(json.dumps([instance(service, i).to_dict() for i in range(n)]))
    config = {"directory": str(directory), "ttl": ttl, "fleet": str(fleet_path)}
    beats = subprocess.Popen(
        [sys.executable, "-c", HEARTBEATS, json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=child_env(workdir), start_new_session=True,
    )  # fmt: skip
    registry = FileRegistry(directory, ttl=ttl)
    try:
        assert beats.stdout is not None
        began = time.monotonic()
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(beats.stdout.readline), read_deadline(n)
            )
        except TimeoutError:
            line = ""
        if line.strip() != "ready":
            raise BenchError(f"the heartbeating process did not register its {n} instances")
        written = time.monotonic() - began
        watcher = Watcher(
            workdir, service, "file", {"directory": str(directory), "ttl": ttl}, read_deadline(n)
        )
        try:
            if watcher.instances != n:
                raise BenchError(f"the file watcher found {watcher.instances} of {n} instances")
            steps = change_steps(service, plan.file_cycles, registry.register,
                                 registry.register, registry.deregister)  # fmt: skip
            return await change_result(watcher, n, steps, plan.file_idle, plan.gap, written)
        finally:
            watcher.close()
    finally:
        await registry.close()
        with contextlib.suppress(OSError):
            assert beats.stdin is not None
            beats.stdin.close()
        try:
            beats.wait(15)
        except subprocess.TimeoutExpired:
            beats.kill()
            beats.wait(10)


def scenario_file(workdir: Path, plan: Plan, max_n: int) -> str:
    results = []
    for n in plan.file_sizes:
        if n <= max_n:
            results.append(asyncio.run(file_change(workdir, n, plan)))
    return (
        "**File registry** (`FileRegistry`, TTL 10 s: the fleet heartbeats from another process "
        f"every 3.3 s; idle CPU over {plan.file_idle:g} s of heartbeats; changes as above, made "
        "through a `FileRegistry` of this process):\n\n" + change_table(results, etcd=False)
    )


# The run -------------------------------------------------------------------------------------


def ensure_section(path: Path = DOC) -> None:
    """Add the section and its markers after "## Registry propagation" if they are missing."""
    text = path.read_text(encoding="utf-8")
    if BEGIN_MARK in text:
        return
    anchor = text.find("\n## Registry propagation")
    if anchor < 0:
        raise SystemExit(f"{path} has no '## Registry propagation' section to follow")
    following = text.find("\n## ", anchor + 1)
    at = len(text) if following < 0 else following + 1
    if not text[:at].endswith("\n\n"):
        text, at = text[:at] + "\n" + text[at:], at + 1
    path.write_text(text[:at] + SECTION + text[at:], encoding="utf-8")


@contextlib.contextmanager
def etcd(workdir: Path) -> Iterator[str]:
    with etcd_server(workdir) as endpoints:
        yield endpoints[0]


def etcd_version() -> str:
    binary = shutil.which("etcd")
    if binary is None:
        return "etcd not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].replace("etcd Version: ", "etcd ") if out else "etcd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small fleets, short windows")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--max-instances", type=int, default=100_000, help="skip the larger fleets (default 100000)"
    )
    parser.add_argument(
        "--gap", type=float, default=FULL.gap,
        help=f"seconds between a change seen and the next one (default {FULL.gap:g})",
    )  # fmt: skip
    parser.add_argument(
        "--write", action="store_true", help="write the tables into docs/performance.md"
    )
    args = parser.parse_args()
    plan = dataclasses.replace(QUICK if args.quick else FULL, gap=args.gap)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    max_n = args.max_instances
    notes = []
    if max_n >= 100_000 and available_gib() < 4:
        max_n = 10_000
        notes.append(f"100,000 instances skipped: {available_gib():.1f} GiB of memory available")
    sizes = tuple(n for n in plan.sizes if n <= max_n)
    command = "python bench/discovery.py" + (" --quick" if args.quick else "")
    header = (
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {etcd_version()} "
        "on /dev/shm; the watcher and the client are separate processes):"
        + "".join(f" {note}." for note in notes)
    )
    print(header + "\n", flush=True)
    sections = []
    began = time.monotonic()
    window = CpuWindow([])
    with (
        tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        endpoint = ""
        if {"change", "churn", "dead"} & set(chosen):
            endpoint = stack.enter_context(etcd(workdir))
        for name in chosen:
            try:
                if name == "change":
                    section = scenario_change(endpoint, workdir, plan, sizes)
                elif name == "churn":
                    section = scenario_churn(endpoint, workdir, plan, max_n)
                elif name == "picks":
                    section = scenario_picks(workdir, plan, max_n)
                elif name == "fairness":
                    section = scenario_fairness(plan)
                elif name == "dead":
                    section = scenario_dead(endpoint, workdir, plan)
                else:
                    section = scenario_file(workdir, plan, max_n)
            except BenchError as err:
                section = f"**{name}**: not measured: {err}"
            print(section + "\n", flush=True)
            sections.append(section)
    others = window.close()[3]
    sections.append(
        f"Other programs used {others:.2f} of the {os.cpu_count()} CPUs on average during the "
        f"run ({time.monotonic() - began:.0f} s)."
    )
    print(sections[-1], flush=True)
    if args.write:
        ensure_section()
        write_block(header + "\n\n" + "\n\n".join(sections) + "\n", BEGIN_MARK, END_MARK)


if __name__ == "__main__":
    main()
