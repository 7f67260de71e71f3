"""The load: h2load's request, its run, and its figures (QPS, latency percentiles).

Every configuration is loaded with the same h2load command: the gRPC frame of
``HelloRequest(name="world")`` posted to ``SayHello`` on ``-c`` connections of ``-m`` streams.
``h2load`` checks that every request got its reply (gRPC answers HTTP 200 even to a failed
call) and reads the per-request times of h2load's log for the percentiles.
"""

from __future__ import annotations

import math
import re
import statistics
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import BenchError
from example.generate import hello_pb2

METHOD_PATH = "/helloworld.Greeter/SayHello"
GREETING = "Hello, world!"


def grpc_request_args(body: Path) -> list[str]:
    """The arguments of h2load and of nghttp that post ``body`` as a gRPC request."""
    return ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]


def method_url(port: int) -> str:
    """The URL of ``SayHello`` on ``127.0.0.1:port``."""
    return f"http://127.0.0.1:{port}{METHOD_PATH}"


@dataclass
class LoadResult:
    """The figures of one h2load run (latencies in ms)."""

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
        *grpc_request_args(body),
    ]
    if log_path is not None:
        log_path.unlink(missing_ok=True)  # h2load appends to an existing log
        args.append(f"--log-file={log_path}")
    args.append(method_url(port))
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
    """Seconds of an h2load duration (``6s``, ``300ms``, ``1m``); ValueError if it is none."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    if not match:
        raise ValueError(f"bad h2load duration {value!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale
