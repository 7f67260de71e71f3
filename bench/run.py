#!/usr/bin/env python
"""Benchmark the example service against a bare grpc.aio servicer, side by side, with h2load.

One run starts each configuration in turn, checks that it really answers gRPC successes, loads
it with the same h2load command, and reads its memory:

    a   bare grpc.aio servicer, default asyncio loop          (bench/bare_server.py)
    b   bare grpc.aio servicer, uvloop                        (bench/bare_server.py --loop uvloop)
    b2  the same, 2 processes sharing the port                (... --loop uvloop --processes 2)
    c   example service, default settings, one process        (manage.py runserver)
    ca  example service, default settings but GRPC EVENT_LOOP="asyncio"
    d   example service, default settings, --workers 2        (manage.py runserver --workers 2)

``--workers 1`` is (c): runserver serves in-process when it is given one worker. Rounds are
interleaved (a, b, b2, ca, c, d, then again in a rotated order) and every figure is the median over
the rounds. ``--write`` replaces the results block of docs/performance.md.

    python bench/run.py                 # the full run (about 8 minutes)
    python bench/run.py --quick         # a smoke run of a few seconds
    python bench/run.py --write         # full run, then rewrite docs/performance.md's figures
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DOC = ROOT / "docs" / "performance.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from microframe.test.ports import free_port  # noqa: E402

from example.generate import hello_pb2  # noqa: E402

BEGIN_MARK = "<!-- bench:results:begin -->"
END_MARK = "<!-- bench:results:end -->"
METHOD_PATH = "/helloworld.Greeter/SayHello"
GREETING = "Hello, world!"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

#: Targets of DESIGN.md §8: (label, ratio key, comparison, bound).
TARGETS = [
    ("QPS (c)/(a)", "qps_c_a", ">=", 0.9),
    ("QPS (c)/(a), uvloop installed and used by (c)", "qps_c_a", ">=", 1.0),
    ("p99 overhead (c) vs (a), under load", "p99_c_a", "<=", 0.10),
    ("idle RSS (c)/(a)", "rss_c_a", "<=", 1.5),
    ("QPS (d)/(c), 2 workers vs 1", "qps_d_c", ">=", 1.4),
]


class BenchError(RuntimeError):
    """A configuration could not be measured (did not start, wrong answers, h2load failed)."""


# ---------------------------------------------------------------------------------------------
# Configurations


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    kind: str  # "bare" or "runserver"
    loop: str = ""  # bare: asyncio/uvloop
    workers: int = 1
    settings: str | None = None  # runserver: a --settings module, None for the default
    extra: tuple[str, ...] = ()  # runserver: more arguments


def configurations(dev_settings: str | None, extra: tuple[str, ...] = ()) -> dict[str, Config]:
    configs = {
        "a": Config("a", "bare grpc.aio, asyncio loop", "bare", loop="asyncio"),
        "b": Config("b", "bare grpc.aio, uvloop", "bare", loop="uvloop"),
        "b2": Config("b2", "bare grpc.aio, uvloop, 2 processes", "bare", loop="uvloop", workers=2),
        "ca": Config(
            "ca",
            'example, default stack, EVENT_LOOP="asyncio"',
            "runserver",
            settings="bench_asyncio_settings",
        ),
        "c": Config(
            "c", "example, default settings (= --workers 1)", "runserver", settings=dev_settings
        ),
        "d": Config(
            "d",
            "example, default settings, --workers 2",
            "runserver",
            workers=2,
            settings=dev_settings,
        ),
    }
    return {k: replace(c, extra=extra) if c.kind == "runserver" else c for k, c in configs.items()}


def write_helper_settings(directory: Path, dev_settings: str | None) -> None:
    """Write the settings module of (ca): the one under test, with the asyncio loop forced."""
    base = dev_settings or "example.settings"
    (directory / "bench_asyncio_settings.py").write_text(
        f'"""{base}, with the default asyncio event loop forced."""\n'
        f"from {base} import *  # noqa: F401,F403\n"
        f"from {base} import GRPC as _GRPC\n\n"
        'GRPC = dict(_GRPC, EVENT_LOOP="asyncio")\n'
    )


# ---------------------------------------------------------------------------------------------
# Processes




def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def listen_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def holds_listener(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def uses_uvloop(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("uvloop" in line for line in f)
    except OSError:
        return False


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has used (user + nice + system) and had stolen."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / CLOCK_TICK, fields[7] / CLOCK_TICK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used during a window: by the server processes, and by everything else.

    "Other" is the machine's user + system time minus the server's, h2load's (the children
    reaped in the window) and this runner's: other programs sharing the machine, plus the
    time the hypervisor stole. It tells a disturbed measurement from a clean one.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.per_process0 = [process_cpu(p) for p in pids]
        self.server0 = sum(self.per_process0)
        self.machine0, self.steal0 = machine_cpu()
        self.children0 = children_cpu()
        self.own0 = time.process_time()

    def close(self) -> tuple[float, float, float, float]:
        """Return the server's CPU seconds, and the cores used by the server, by the load
        generator (the children reaped meanwhile) and by other programs, since the window opened.
        """
        wall = max(time.monotonic() - self.start, 1e-6)
        per_process = [process_cpu(p) for p in self.pids]
        self.per_process_cores = [
            (b - a) / wall for a, b in zip(self.per_process0, per_process, strict=True)
        ]
        server = sum(per_process) - self.server0
        machine, steal = machine_cpu()
        loadgen = children_cpu() - self.children0
        ours = server + loadgen + (time.process_time() - self.own0)
        other = max(0.0, machine - self.machine0 - ours) + (steal - self.steal0)
        return server, server / wall, loadgen / wall, other / wall


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine's other load is under ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow([])
        time.sleep(0.5)
        other = window.close()[3]
        if other <= threshold or time.monotonic() >= deadline:
            return other
        time.sleep(0.5)


def child_env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MICROFRAME_SETTINGS_MODULE", "MICROFRAME_ENV", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(extra_path), env.get("PYTHONPATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerUnderTest:
    """One server process (and its workers), started and stopped with bounded waits."""

    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.port = free_port()
        self.log_path = workdir / f"server-{config.key}-{self.port}.log"
        if config.kind == "bare":
            args = [
                sys.executable,
                str(BENCH / "bare_server.py"),
                "--port",
                str(self.port),
                "--loop",
                config.loop,
            ]
            if config.workers != 1:
                args += ["--processes", str(config.workers)]
        else:
            args = [
                sys.executable,
                str(ROOT / "manage.py"),
                "runserver",
                f"127.0.0.1:{self.port}",
                "--noreload",
                "--metrics-port",
                "0",
            ]
            if config.workers != 1:
                args += ["--workers", str(config.workers)]
            if config.settings:
                args += ["--settings", config.settings]
            args += list(config.extra)
        self.args = args
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=child_env(workdir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def fail(self, message: str) -> BenchError:
        tail = "\n".join(self.output.splitlines()[-30:])
        return BenchError(f"({self.config.key}) {message}\n--- server output ---\n{tail}")

    def serving_pids(self) -> list[int]:
        """The processes that serve calls: the server, or the workers of a supervisor."""
        if self.config.workers > 1:
            return children_of(self.proc.pid)
        return [self.proc.pid]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        marker = "READY port=" if self.config.kind == "bare" else "Serving gRPC on"
        while marker not in self.output:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with code {self.proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise self.fail(f"not serving after {timeout:.0f} s")
            time.sleep(0.02)
        if self.config.workers > 1:
            # The supervisor prints its line before the workers are up: wait for every worker
            # to hold a listening socket on the port.
            while True:
                pids = children_of(self.proc.pid)
                inodes = listen_inodes(self.port)
                if len(pids) >= self.config.workers and all(
                    holds_listener(p, inodes) for p in pids
                ):
                    break
                if self.proc.poll() is not None:
                    raise self.fail(f"exited with code {self.proc.returncode} before serving")
                if time.monotonic() > deadline:
                    raise self.fail(
                        f"{self.config.workers} workers not listening after {timeout:.0f} s"
                    )
                time.sleep(0.05)
        if self.config.kind == "runserver":
            self.wait_health(deadline)

    def wait_health(self, deadline: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as err:
                last = err
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise self.fail(f"health check never SERVING (last error: {last!r})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  ({self.config.key}) did not stop on SIGTERM, killing it", file=sys.stderr)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # Workers left behind by a killed supervisor are in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@contextlib.contextmanager
def running(config: Config, workdir: Path) -> Iterator[ServerUnderTest]:
    server = ServerUnderTest(config, workdir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Checking the answers


def verify_grpc(port: int, calls: int = 4) -> None:
    """Make real grpc calls (fresh channels, so several workers get some) and check the reply."""
    import grpc

    from example.generate import hello_pb2_grpc

    for _ in range(calls):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = hello_pb2_grpc.GreeterStub(channel).SayHello(
                hello_pb2.HelloRequest(name="world"), timeout=5.0
            )
        if reply.message != GREETING:
            raise BenchError(f"SayHello answered {reply.message!r}, expected {GREETING!r}")


def verify_raw(port: int, body: Path) -> str:
    """Send the h2load request with nghttp and check the grpc-status trailer is 0."""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        return "nghttp missing: trailer not checked"
    out = subprocess.run(
        [
            nghttp,
            "-v",
            "-d",
            str(body),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://127.0.0.1:{port}{METHOD_PATH}",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        errors="replace",
    ).stdout
    match = re.search(r"grpc-status: (\d+)", out)
    if not match or match.group(1) != "0" or GREETING not in out:
        raise BenchError(f"the raw h2load request is not a gRPC success:\n{out[-2000:]}")
    return "grpc-status 0"


def metrics_url(output: str) -> str | None:
    match = re.search(r"metrics on (http://\S+/metrics)", output)
    return match.group(1) if match else None


def handled_ok(url: str) -> float:
    """Scrape ``url``; return grpc_server_handled_total of SayHello with code OK."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and 'grpc_method="SayHello"' in line
            and 'grpc_code="OK"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------------------------
# h2load


@dataclass
class LoadResult:
    qps: float
    succeeded: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float


def request_body(directory: Path) -> tuple[Path, int]:
    """Write the gRPC frame of HelloRequest(name="world"); return it and the reply frame size."""
    message = hello_pb2.HelloRequest(name="world").SerializeToString()
    path = directory / "request.bin"
    path.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)
    reply = hello_pb2.HelloReply(message=GREETING).SerializeToString()
    return path, 5 + len(reply)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


def h2load(
    port: int,
    body: Path,
    reply_frame: int,
    duration: str,
    clients: int,
    streams: int,
    log_path: Path | None,
) -> LoadResult | None:
    """Run h2load for ``duration``; check every response carried the reply; parse the figures."""
    args = [
        "h2load",
        "-D",
        duration,
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    if log_path is not None:
        log_path.unlink(missing_ok=True)  # h2load appends to an existing log
        args.append(f"--log-file={log_path}")
    args.append(f"http://127.0.0.1:{port}{METHOD_PATH}")
    seconds = parse_duration(duration)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"h2load did not finish: {' '.join(args)}") from err
    out = proc.stdout
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    data = re.search(r"\((\d+)\) data", out)
    if proc.returncode != 0 or not (finished and counts and data):
        raise BenchError(f"h2load failed ({proc.returncode}):\n{out}\n{proc.stderr}")
    _total, started, done, succeeded, failed, errored, timeouts = map(int, counts.groups())
    if succeeded == 0 or failed or errored or timeouts:
        raise BenchError(f"h2load: {counts.group(0)}")
    # gRPC answers HTTP 200 even to a failed call, which then carries no DATA frame (status in
    # the trailers only): every succeeded request must have received exactly one reply frame.
    data_bytes = int(data.group(1))
    in_flight = started - done
    if not succeeded * reply_frame <= data_bytes <= (succeeded + in_flight) * reply_frame:
        raise BenchError(
            f"h2load: {data_bytes} bytes of DATA for {succeeded} succeeded requests, expected "
            f"{reply_frame} each: some calls were not answered with a reply"
        )
    if log_path is None:
        return None
    times = []
    with open(log_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                if parts[1] != "200":
                    raise BenchError(f"h2load log: a request ended with status {parts[1]}")
                times.append(int(parts[2]))
    if not times:
        raise BenchError("h2load wrote no per-request times")
    times.sort()
    return LoadResult(
        qps=float(finished.group(3)),
        succeeded=succeeded,
        p50_ms=percentile(times, 0.50) / 1000,
        p99_ms=percentile(times, 0.99) / 1000,
        mean_ms=statistics.fmean(times) / 1000,
        max_ms=times[-1] / 1000,
    )


def parse_duration(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    if not match:
        raise ValueError(f"bad h2load duration {value!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


# ---------------------------------------------------------------------------------------------
# One measurement


@dataclass
class Sample:
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
    config: Config, rnd: int, opts: argparse.Namespace, workdir: Path, body: Path, frame: int
) -> Sample:
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
    config: Config, rnd: int, opts: argparse.Namespace, workdir: Path, body: Path, frame: int
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
            f"run: {'measuring again' if attempt <= opts.retries else 'keeping the quietest attempt'}",
            flush=True,
        )
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# Summary


def med(values: list[float | int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mb(values_kb: list[float | int | None]) -> float | None:
    value = med(values_kb)
    return None if value is None else value / 1024


def summarize(samples: list[Sample], configs: dict[str, Config]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for key, config in configs.items():
        mine = [s for s in samples if s.config == key]
        if not mine:
            continue
        workers = config.workers
        summary[key] = {
            "label": config.label,
            "loop": mine[0].loop,
            "workers": workers,
            "rounds": len(mine),
            "qps": med([s.qps for s in mine]),
            "qps_all": [round(s.qps) for s in mine],
            "p50_ms": med([s.p50_ms for s in mine]),
            "p99_ms": med([s.p99_ms for s in mine]),
            "mean_ms": med([s.mean_ms for s in mine]),
            "lat1_p50_ms": med([s.lat1_p50_ms for s in mine]),
            "lat1_p99_ms": med([s.lat1_p99_ms for s in mine]),
            "cpu_us": med([s.server_cpu_us_per_call for s in mine]),
            "server_cores": med([s.server_cores for s in mine]),
            "loadgen_cores": med([s.loadgen_cores for s in mine]),
            "other_load_max": max(s.other_load_cores for s in mine),
            "rss_idle_mb": mb([s.rss_idle_kb for s in mine]),
            "rss_after_mb": mb([s.rss_after_kb for s in mine]),
            "rss_idle_worker_mb": mb([s.rss_idle_kb / workers for s in mine]),
            "rss_after_worker_mb": mb([s.rss_after_kb / workers for s in mine]),
            "rss_supervisor_mb": mb([s.rss_supervisor_kb for s in mine]),
        }
    return summary


#: Every ratio computed: name -> (x, y, metric, shown as an overhead in percent).
RATIOS = {
    "qps_c_a": ("c", "a", "qps", False),
    "qps_c_b": ("c", "b", "qps", False),
    "qps_ca_a": ("ca", "a", "qps", False),
    "qps_b_a": ("b", "a", "qps", False),
    "qps_d_c": ("d", "c", "qps", False),
    "qps_b2_b": ("b2", "b", "qps", False),
    "p99_c_a": ("c", "a", "p99_ms", True),
    "p99_c_b": ("c", "b", "p99_ms", True),
    "p99_ca_a": ("ca", "a", "p99_ms", True),
    "lat1_p99_c_a": ("c", "a", "lat1_p99_ms", True),
    "lat1_p99_c_b": ("c", "b", "lat1_p99_ms", True),
    "lat1_p99_ca_a": ("ca", "a", "lat1_p99_ms", True),
    "rss_c_a": ("c", "a", "rss_idle_mb", False),
    "rss_c_b": ("c", "b", "rss_idle_mb", False),
}

SAMPLE_METRIC = {
    "qps": "qps",
    "p99_ms": "p99_ms",
    "lat1_p99_ms": "lat1_p99_ms",
    "rss_idle_mb": "rss_idle_kb",
}


def ratios(
    summary: dict[str, dict[str, Any]], samples: list[Sample]
) -> dict[str, dict[str, float]]:
    """Every ratio three ways: of the medians (the figure), the median of the per-round ratios
    (each round's two runs are minutes apart at most), and, for the QPS of one process, the
    inverse ratio of the server CPU spent per call (insensitive to other programs' load)."""
    of_medians: dict[str, float] = {}
    paired: dict[str, float] = {}
    by_cpu: dict[str, float] = {}
    for name, (x, y, metric, overhead) in RATIOS.items():
        if x not in summary or y not in summary:
            continue
        shift = 1.0 if overhead else 0.0
        if summary[x][metric] and summary[y][metric]:
            of_medians[name] = summary[x][metric] / summary[y][metric] - shift
        field_name = SAMPLE_METRIC[metric]
        per_round = []
        for rnd in sorted({s.round for s in samples}):
            sx = [getattr(s, field_name) for s in samples if s.config == x and s.round == rnd]
            sy = [getattr(s, field_name) for s in samples if s.config == y and s.round == rnd]
            if sx and sy and sx[0] and sy[0]:
                per_round.append(sx[0] / sy[0] - shift)
        if per_round:
            paired[name] = statistics.median(per_round)
        if metric == "qps" and summary[x]["workers"] == summary[y]["workers"] == 1:
            by_cpu[name] = summary[y]["cpu_us"] / summary[x]["cpu_us"]
    return {"of_medians": of_medians, "paired": paired, "by_cpu": by_cpu}


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def results_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| config | loop | QPS (median) | QPS per round | p50 ms | p99 ms | p50 / p99 ms at c=1 m=1 "
        "| server CPU µs/call | CPU cores: server + h2load | RSS idle MB | RSS after load MB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        if s["workers"] > 1:
            rss_idle = (
                f"{s['rss_idle_mb']:.1f} ({s['workers']} × {s['rss_idle_worker_mb']:.1f}; "
                f"+ parent {s['rss_supervisor_mb']:.1f})"
            )
            rss_after = f"{s['rss_after_mb']:.1f} ({s['workers']} × {s['rss_after_worker_mb']:.1f})"
        else:
            rss_idle = f"{s['rss_idle_mb']:.1f}"
            rss_after = f"{s['rss_after_mb']:.1f}"
        lines.append(
            f"| ({key}) {s['label']} | {s['loop']} | {s['qps']:.0f} | "
            f"{', '.join(str(q) for q in s['qps_all'])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{fmt(s['lat1_p50_ms'], '.3f')} / {fmt(s['lat1_p99_ms'], '.3f')} | {s['cpu_us']:.0f} | "
            f"{s['server_cores']:.2f} + {s['loadgen_cores']:.2f} | "
            f"{rss_idle} | {rss_after} |"
        )
    return "\n".join(lines)


def verdict(value: float, op: str, bound: float) -> str:
    ok = value >= bound if op == ">=" else value <= bound
    return "met" if ok else "**missed**"


def ratios_table(r: dict[str, dict[str, float]]) -> str:
    lines = [
        "| ratio | of the medians | median of per-round ratios | from server CPU per call | target | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]

    def shown(name: str, table: str) -> str:
        value = r[table].get(name)
        if value is None:
            return "–"
        return f"{value * 100:+.1f} %" if RATIOS[name][3] else f"{value:.2f}"

    for label, name, op, bound in TARGETS:
        if name not in r["of_medians"]:
            continue
        target = f"{op} {bound * 100:+.0f} %" if RATIOS[name][3] else f"{op} {bound:.1f}"
        lines.append(
            f"| {label} | {shown(name, 'of_medians')} | {shown(name, 'paired')} | "
            f"{shown(name, 'by_cpu')} | {target} | {verdict(r['of_medians'][name], op, bound)} |"
        )
    info = [
        ("QPS (c)/(b): the framework at equal loop (uvloop)", "qps_c_b"),
        ("QPS (ca)/(a): the framework at equal loop (asyncio)", "qps_ca_a"),
        ("QPS (b)/(a): uvloop alone", "qps_b_a"),
        ("QPS (b2)/(b): bare grpc.aio, 2 processes vs 1", "qps_b2_b"),
        ("p99 overhead (c) vs (b), under load", "p99_c_b"),
        ("p99 overhead (ca) vs (a), under load", "p99_ca_a"),
        ("p99 overhead (c) vs (a), one call at a time", "lat1_p99_c_a"),
        ("p99 overhead (c) vs (b), one call at a time", "lat1_p99_c_b"),
        ("p99 overhead (ca) vs (a), one call at a time", "lat1_p99_ca_a"),
        ("idle RSS (c)/(b)", "rss_c_b"),
    ]
    for label, name in info:
        if name in r["of_medians"]:
            lines.append(
                f"| {label} | {shown(name, 'of_medians')} | {shown(name, 'paired')} | "
                f"{shown(name, 'by_cpu')} | (for information) | |"
            )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpuinfo: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            cpuinfo[key.strip()] = value.strip()
    cpu = (
        f"{cpuinfo.get('model name', 'unknown')} (family {cpuinfo.get('cpu family', '?')}, "
        f"model {cpuinfo.get('model', '?')}, {cpuinfo.get('cpu MHz', '?')} MHz"
        + (", virtual machine" if "hypervisor" in cpuinfo.get("flags", "").split() else "")
        + ")"
    )
    versions = {}
    for name in ("grpc", "google.protobuf", "uvloop"):
        try:
            module = __import__(name, fromlist=["__version__"])
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = "not installed"
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cpus": f"{os.cpu_count()} (usable by this process: {len(os.sched_getaffinity(0))})",
        "cpu": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": versions["grpc"],
        "protobuf": versions["google.protobuf"],
        "uvloop": versions["uvloop"],
        "h2load": h2,
    }


def report(
    summary: dict[str, dict[str, Any]],
    r: dict[str, dict[str, float]],
    opts: argparse.Namespace,
    info: dict[str, str],
    samples: list[Sample],
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = (
        "python bench/run.py"
        + (" --quick" if opts.quick else "")
        + (f" --settings {opts.settings}" if opts.settings else "")
        + "".join(f" --runserver-arg={a}" for a in opts.runserver_arg)
    )
    load = (
        f"h2load -t 1 -c {opts.clients} -m {opts.streams}: warm-up {opts.warmup}, then measured "
        f"-D {opts.duration}"
        + (f", then -c 1 -m 1 -D {opts.latency_duration}" if opts.latency_duration != "0" else "")
    )
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    again = sum(s.attempts - 1 for s in samples)
    quiet = (
        f" Other programs used at most {max(s.other_load_cores for s in samples):.2f} cores during "
        f"a kept measurement (limit {opts.max_other_load:.2f}; {again} measurement(s) done again "
        f"because of them)."
    )
    return (
        f"Measured {when} with `{command}`: {opts.rounds} interleaved round(s), median shown. "
        f"Load: {load}.{quiet}\n\n"
        f"{machine_lines}\n\n"
        f"{results_table(summary)}\n\n"
        f"{ratios_table(r)}\n"
    )


def write_doc(block: str, path: Path = DOC) -> None:
    text = path.read_text()
    begin, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path} has no {BEGIN_MARK} ... {END_MARK} block to replace")
    path.write_text(text[: begin + len(BEGIN_MARK)] + "\n\n" + block + "\n" + text[end:])


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 6, quick 1)")
    parser.add_argument("--duration", help="measured h2load -D per run (default 6s, quick 1s)")
    parser.add_argument(
        "--warmup", help="h2load warm-up run before it (default 2s, quick 300ms; 0: none)"
    )
    parser.add_argument(
        "--latency-duration", help="extra one-call-at-a-time run (default 2s, quick 300ms; 0: none)"
    )
    parser.add_argument(
        "-c", "--clients", type=int, default=4, help="h2load connections (default 4)"
    )
    parser.add_argument(
        "-m", "--streams", type=int, default=16, help="concurrent streams per connection (16)"
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated subset of a,b,b2,ca,c,d (default all; quick a,b,c,d)",
    )
    parser.add_argument(
        "--settings", help="settings module for (c)/(d) instead of example.settings"
    )
    parser.add_argument(
        "--runserver-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every runserver command (repeatable; use --runserver-arg=--x)",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.15,
        help="CPU cores other programs may use during a measured run before it is measured again (0.15)",
    )
    parser.add_argument(
        "--retries", type=int, help="measurements again when disturbed (default 2, quick 0)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for a quiet machine before each run (default 30, quick 0)",
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="seconds before reading the idle RSS"
    )
    parser.add_argument("--json", type=Path, help="also write the raw samples and summary there")
    write = parser.add_mutually_exclusive_group()
    write.add_argument(
        "--write", action="store_true", help=f"rewrite the results block of {DOC.relative_to(ROOT)}"
    )
    write.add_argument(
        "--no-write", dest="write", action="store_false", help="do not touch the docs (default)"
    )
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.rounds = opts.rounds or (1 if quick else 6)
    opts.duration = opts.duration or ("1s" if quick else "6s")
    opts.warmup = opts.warmup or ("300ms" if quick else "2s")
    opts.retries = (0 if quick else 2) if opts.retries is None else opts.retries
    opts.quiet_wait = (0.0 if quick else 30.0) if opts.quiet_wait is None else opts.quiet_wait
    opts.latency_duration = opts.latency_duration or ("300ms" if quick else "2s")
    for value in (opts.duration, opts.warmup, opts.latency_duration):
        parse_duration(value)
    if opts.write and (quick or opts.configs):
        parser.error("--write records a full run of every configuration: drop --quick/--configs")
    if opts.settle < 0 or opts.rounds < 1:
        parser.error("--rounds must be >= 1 and --settle >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    configs = configurations(opts.settings, tuple(opts.runserver_arg))
    wanted = (opts.configs or ("a,b,c,d" if opts.quick else "a,b,b2,ca,c,d")).split(",")
    unknown = [k for k in wanted if k not in configs]
    if unknown:
        print(f"unknown configuration(s) {unknown}; choose among {list(configs)}", file=sys.stderr)
        return 2
    configs = {k: configs[k] for k in configs if k in wanted}
    samples: list[Sample] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="microframe-bench-") as tmp:
        workdir = Path(tmp)
        write_helper_settings(workdir, opts.settings)
        body, frame = request_body(workdir)
        order = list(configs)
        for rnd in range(opts.rounds):
            for key in order[rnd % len(order) :] + order[: rnd % len(order)]:
                t0 = time.monotonic()
                try:
                    sample = measure_quietly(configs[key], rnd, opts, workdir, body, frame)
                except BenchError as err:
                    print(f"FAILED {err}", file=sys.stderr)
                    return 1
                samples.append(sample)
                print(
                    f"round {rnd + 1}/{opts.rounds} ({key}) {sample.qps:8.0f} req/s  "
                    f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                    f"rss {sample.rss_idle_kb / 1024:6.1f} -> {sample.rss_after_kb / 1024:6.1f} MB  "
                    f"cpu {sample.server_cpu_us_per_call:4.0f} us/call, cores: server "
                    f"{sample.server_cores:.2f}"
                    + (
                        f" ({' + '.join(f'{c:.2f}' for c in sample.per_worker_cores)})"
                        if len(sample.per_worker_cores) > 1
                        else ""
                    )
                    + f" h2load {sample.loadgen_cores:.2f} "
                    f"other {sample.other_load_cores:.2f}  "
                    f"[{sample.loop}, {sample.check}] {time.monotonic() - t0:.1f} s",
                    flush=True,
                )
    summary = summarize(samples, configs)
    r = ratios(summary, samples)
    info = machine()
    block = report(summary, r, opts, info, samples)
    print()
    print(block)
    print(f"(total {time.monotonic() - started:.0f} s)")
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "samples": [asdict(s) for s in samples],
                    "summary": summary,
                    "ratios": r,
                    "machine": info,
                },
                indent=2,
            )
        )
    if opts.write:
        write_doc(block)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
