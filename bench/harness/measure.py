"""One measurement of a configuration, and the options and order of a run's measurements.

``measure`` starts the configuration, checks its answers, reads its idle memory, warms it up,
loads it with h2load while sampling its CPU, measures one call at a time, reads its memory
again and checks the framework counted every call; ``measure_quietly`` does it again when other
programs loaded the machine meanwhile. ``interleaved`` is the order of a run: every round
measures each configuration once, starting one further each round.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import handled_ok, metrics_url, verify_grpc, verify_raw
from .load import h2load
from .sampling import CpuWindow, uses_uvloop, vm_rss_kb, wait_quiet
from .servers import Config, running


@dataclass(frozen=True)
class RunOptions:
    """How a run measures: rounds, h2load's durations and load, and the quiet-machine rules.

    Durations are h2load's (``6s``, ``300ms``); ``"0"`` skips the warm-up or the one call at a
    time run.
    """

    rounds: int
    duration: str
    warmup: str
    latency_duration: str
    clients: int = 4
    streams: int = 16
    settle: float = 0.5
    retries: int = 2
    quiet_wait: float = 30.0
    max_other_load: float = 0.15

    @classmethod
    def defaults(cls, quick: bool, **given: Any) -> RunOptions:
        """The options of a full run (or of a ``quick`` smoke run), ``given`` ones overriding
        them (a ``None`` there keeps the default)."""
        base: dict[str, Any] = (
            {"rounds": 1, "duration": "1s", "warmup": "300ms", "latency_duration": "300ms"}
            | {"retries": 0, "quiet_wait": 0.0}
            if quick
            else {"rounds": 6, "duration": "6s", "warmup": "2s", "latency_duration": "2s"}
        )
        base.update({k: v for k, v in given.items() if v is not None})
        return cls(**base)


def interleaved(keys: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """``(round, key)`` in a run's order: each round rotated by one, so that no configuration
    is always measured first or after the same other one."""
    order = list(keys)
    for rnd in range(rounds):
        for key in order[rnd % len(order) :] + order[: rnd % len(order)]:
            yield rnd, key


@dataclass
class Sample:
    """What one measurement of one configuration found (the JSON of ``--json`` holds these)."""

    config: str
    round: int
    qps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests: int
    lat1_p50_ms: float | None
    lat1_p99_ms: float | None
    rss_idle_kb: int
    rss_after_kb: int
    rss_idle_per_worker_kb: list[int] = field(default_factory=list)
    rss_after_per_worker_kb: list[int] = field(default_factory=list)
    rss_supervisor_kb: int | None = None
    loop: str = ""
    check: str = ""
    server_cpu_us_per_call: float = 0.0
    server_cores: float = 0.0
    per_worker_cores: list[float] = field(default_factory=list)
    loadgen_cores: float = 0.0
    other_load_cores: float = 0.0
    attempts: int = 1


def measure(
    config: Config, rnd: int, opts: RunOptions, workdir: Path, body: Path, frame: int
) -> Sample:
    """Measure ``config`` once, as round ``rnd``; ``body`` and ``frame`` are h2load's request
    and the size of the reply frame (``load.request_body``)."""
    with running(config, workdir) as server:
        verify_grpc(server.port)
        check = verify_raw(server.port, body)
        time.sleep(opts.settle)
        pids = server.serving_pids()
        if len(pids) != config.workers:
            raise server.fail(f"expected {config.workers} serving processes, found {pids}")
        idle = [vm_rss_kb(p) or 0 for p in pids]
        loop = "uvloop" if all(uses_uvloop(p) for p in pids) else "asyncio"
        if opts.warmup != "0":
            h2load(server.port, body, frame, opts.warmup, opts.clients, opts.streams, None)
        log = workdir / f"h2load-{config.key}-{rnd}.log"
        window = CpuWindow(pids + ([server.proc.pid] if config.workers > 1 else []))
        load = h2load(server.port, body, frame, opts.duration, opts.clients, opts.streams, log)
        server_cpu, server_cores, loadgen_cores, other_load = window.close()
        per_worker_cores = window.per_process_cores[: len(pids)]
        assert load is not None
        lat1 = None
        if opts.latency_duration != "0":
            lat1 = h2load(server.port, body, frame, opts.latency_duration, 1, 1, log)
        if server.serving_pids() != pids:
            raise server.fail(
                f"serving processes changed under load: {pids} -> {server.serving_pids()}"
            )
        after = [vm_rss_kb(p) or 0 for p in pids]
        supervisor = vm_rss_kb(server.proc.pid) if config.workers > 1 else None
        verify_grpc(server.port, calls=1)
        url = metrics_url(server.output) if config.kind == "runserver" else None
        if url:
            # The default middleware really ran: the server counted every measured call.
            counted = handled_ok(url)
            if counted < load.succeeded:
                raise server.fail(
                    f"{url} counts {counted:.0f} OK SayHello calls, fewer than {load.succeeded}"
                )
            check += f", {counted:.0f} OK calls in /metrics"
    return Sample(
        config=config.key,
        round=rnd,
        qps=load.qps,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        mean_ms=load.mean_ms,
        max_ms=load.max_ms,
        requests=load.succeeded,
        lat1_p50_ms=lat1.p50_ms if lat1 else None,
        lat1_p99_ms=lat1.p99_ms if lat1 else None,
        rss_idle_kb=sum(idle),
        rss_after_kb=sum(after),
        rss_idle_per_worker_kb=idle,
        rss_after_per_worker_kb=after,
        rss_supervisor_kb=supervisor,
        loop=loop,
        check=check,
        server_cpu_us_per_call=server_cpu / load.succeeded * 1e6,
        server_cores=server_cores,
        per_worker_cores=per_worker_cores,
        loadgen_cores=loadgen_cores,
        other_load_cores=other_load,
    )


def measure_quietly(
    config: Config, rnd: int, opts: RunOptions, workdir: Path, body: Path, frame: int
) -> Sample:
    """Measure, after waiting for a quiet machine; measure again when others loaded it meanwhile.

    Of the attempts, the one during which the other programs used the least CPU is kept.
    """
    best: Sample | None = None
    for attempt in range(1, opts.retries + 2):
        wait_quiet(opts.quiet_wait, opts.max_other_load)
        sample = measure(config, rnd, opts, workdir, body, frame)
        sample.attempts = attempt
        if best is None or sample.other_load_cores < best.other_load_cores:
            best = sample
        if sample.other_load_cores <= opts.max_other_load:
            break
        print(
            f"  ({config.key}) other programs used {sample.other_load_cores:.2f} cores during the "
            "run: "
            + ("measuring again" if attempt <= opts.retries else "keeping the quietest attempt"),
            flush=True,
        )
    assert best is not None
    return best
