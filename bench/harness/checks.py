"""Checking that a server's answers are gRPC successes, and that the framework counted them.

h2load alone cannot tell a gRPC failure from a success (both are HTTP 200): before each
measurement a real gRPC client and nghttp check the reply and its ``grpc-status`` trailer, and
after it the example's /metrics must count at least every call h2load saw succeed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from . import BenchError
from .load import GREETING, grpc_request_args, method_url
from example.generate import hello_pb2


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
        [nghttp, "-v", *grpc_request_args(body), method_url(port)],
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
    """The /metrics URL runserver printed in ``output``, if it serves one."""
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
