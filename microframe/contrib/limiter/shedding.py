"""Adaptive load shedding: drop work when the service is overloaded (Kratos' BBR).

A rate limit needs a number; an overloaded service needs none: ``SheddingMiddleware`` watches
the process's CPU use, the calls in flight, and the throughput and latency of the last
``WINDOW`` seconds, and refuses (RESOURCE_EXHAUSTED, ``the service is overloaded``) the calls
that would only queue. Its rule is BBR's, as in Kratos and go-zero:

- the service can hold ``max_inflight = max_pass * min_rt * buckets_per_second`` calls at once,
  where ``max_pass`` is the most calls completed in one bucket of the window and ``min_rt`` the
  lowest average latency of a bucket: what flows through when nothing queues;
- while CPU use is at or above ``CPU_THRESHOLD``, a call that finds more than ``max_inflight``
  calls (and more than one) in flight is shed; after a shed, the same test holds for
  ``COOL_OFF`` seconds even if CPU use drops (no flapping);
- below the threshold, and outside the cool-off, nothing is shed.

CPU use is the process's CPU time per second of wall time, over the cores it may use: the
container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), not the host's core
count, and at most one core, since a microframe worker serves on one event loop (run more
workers for more cores). It is sampled every ``CPU_INTERVAL`` seconds and smoothed
(``CPU_DECAY``, an EWMA as Kratos').

    SHEDDING = {"ENABLED": True, "CPU_THRESHOLD": 0.8}

Written here rather than taken from a package: there is no maintained Python BBR shedder; the
rule is two counters per bucket and a comparison.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from microframe.conf import global_settings
from microframe.core.context import RequestContext
from microframe.core.exceptions import MiddlewareNotUsed, ResourceExhausted
from microframe.core.middleware import Handler
from microframe.core.router import Route

DEFAULTS: dict[str, Any] = global_settings.SHEDDING


def cgroup_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores, or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> float:
    """Cores this worker may use: the cgroup quota, the CPUs it may run on, and at most one."""
    if hasattr(os, "sched_getaffinity"):
        cores = float(len(os.sched_getaffinity(0)))
    else:
        cores = float(os.cpu_count() or 1)
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, quota)
    return min(cores, 1.0)


class CpuSampler:
    """The process's CPU use (0-1 of :func:`usable_cores`), sampled in a thread, smoothed."""

    def __init__(self, interval: float = 0.25, decay: float = 0.95, cores: float | None = None,
                 cpu_time: Callable[[], float] = time.process_time) -> None:
        self.interval = interval
        self.decay = decay
        self.cores = cores or usable_cores()
        self.usage = 0.0
        self._cpu_time = cpu_time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="microframe-cpu-sampler", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        last_cpu, last_wall = self._cpu_time(), time.monotonic()
        while not self._stop.wait(self.interval):
            cpu, wall = self._cpu_time(), time.monotonic()
            if wall > last_wall:
                sample = (cpu - last_cpu) / (wall - last_wall) / self.cores
                self.usage = self.usage * self.decay + sample * (1 - self.decay)
            last_cpu, last_wall = cpu, wall

    def stop(self) -> None:
        self._stop.set()


class BBR:
    """BBR's admission rule over a window of ``buckets`` buckets of ``window / buckets`` s."""

    def __init__(
        self,
        *,
        window: float = DEFAULTS["WINDOW"],
        buckets: int = DEFAULTS["BUCKETS"],
        cpu_threshold: float = DEFAULTS["CPU_THRESHOLD"],
        cool_off: float = DEFAULTS["COOL_OFF"],
        cpu: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.width = window / buckets
        self.size = buckets
        self.per_second = 1.0 / self.width
        self.cpu_threshold = cpu_threshold
        self.cool_off = cool_off
        self._cpu = cpu
        self._clock = clock
        self.inflight = 0
        self._slot = [-1] * buckets
        self._passed = [0] * buckets
        self._rt_sum = [0.0] * buckets
        self._last_drop = -math.inf
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> int:
        n = int(now / self.width)
        i = n % self.size
        if self._slot[i] != n:
            self._slot[i], self._passed[i], self._rt_sum[i] = n, 0, 0.0
        return i

    def record(self, rt: float) -> None:
        """A call admitted earlier completed in ``rt`` seconds."""
        with self._lock:
            i = self._bucket(self._clock())
            self._passed[i] += 1
            self._rt_sum[i] += rt

    def max_inflight(self) -> float:
        now = self._clock()
        current = int(now / self.width)
        oldest = current - self.size
        with self._lock:
            done = [(p, r) for s, p, r in zip(self._slot, self._passed, self._rt_sum, strict=True)
                    if oldest < s < current and p > 0]
        if not done:
            return 1.0  # no measure yet: one at a time while overloaded
        max_pass = max(p for p, _ in done)
        min_rt = min(r / p for p, r in done)
        return max_pass * min_rt * self.per_second

    def should_drop(self) -> bool:
        now = self._clock()
        if self._cpu() < self.cpu_threshold:
            if now - self._last_drop > self.cool_off:
                return False
            return self.inflight > 1 and self.inflight > self.max_inflight()
        drop = self.inflight > 1 and self.inflight > self.max_inflight()
        if drop:
            self._last_drop = now
        return drop


_lock = threading.Lock()
_shedder: BBR | None = None


def shedding_options() -> dict[str, Any]:
    from microframe.conf import settings

    return {**DEFAULTS, **(getattr(settings, "SHEDDING", None) or {})}


def get_shedder() -> BBR | None:
    """The process's shedder (one for every method), or None when ``SHEDDING`` is off."""
    global _shedder
    options = shedding_options()
    if not options.get("ENABLED"):
        return None
    if _shedder is None:
        with _lock:
            if _shedder is None:
                sampler = CpuSampler(float(options["CPU_INTERVAL"]), float(options["CPU_DECAY"]),
                                     options.get("CORES"))
                sampler.start()
                _shedder = BBR(window=float(options["WINDOW"]), buckets=int(options["BUCKETS"]),
                               cpu_threshold=float(options["CPU_THRESHOLD"]),
                               cool_off=float(options["COOL_OFF"]),
                               cpu=lambda: sampler.usage)
    return _shedder


class SheddingMiddleware:
    """Shed the calls an overloaded service would only queue (see the module's documentation)."""

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        shedder = get_shedder()
        if shedder is None:
            raise MiddlewareNotUsed
        from microframe.contrib.limiter.metrics import limiter_metrics

        self.next = next
        self.shedder = shedder
        service, method = (route.service, route.method) if route is not None else ("-", "-")
        self._shed = limiter_metrics().shed.labels(service, method)

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        shedder = self.shedder
        if shedder.should_drop():
            self._shed.inc()
            raise ResourceExhausted("the service is overloaded: call shed")
        shedder.inflight += 1
        start = time.perf_counter()
        try:
            return await self.next(ctx, request)
        finally:
            shedder.inflight -= 1
            shedder.record(time.perf_counter() - start)
