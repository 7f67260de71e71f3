#!/usr/bin/env python
"""The baseline of the benchmark: a bare grpc.aio Greeter doing the example service's work.

No framework at all: the generated ``GreeterServicer`` with ``SayHello`` answering the same
``HelloReply`` as ``example/controller/greeter.py``, served by ``grpc.aio.server`` with the
same grpc options ``runserver`` passes (message size limits, pending-call queue,
``maximum_concurrent_rpcs``), so the comparison isolates what the framework adds per call.
No health, reflection, middleware or metrics.

    python bench/bare_server.py --port 0 [--loop asyncio|uvloop] [--grpc-defaults] [--processes N]

Once serving it prints one line ``READY port=<port> pid=<pid> loop=<loop>`` on stdout.
SIGTERM or SIGINT stops it gracefully. ``--processes N`` runs N such servers sharing the port
(SO_REUSEPORT), as ``runserver --workers N`` does, and prints its line once all of them serve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from example.generate import hello_pb2, hello_pb2_grpc  # noqa: E402

#: The message limits and pending-call queue ``runserver`` passes by default
#: (microframe.core.server.ServerConfig.channel_options), spelled out here so that this baseline
#: imports nothing from microframe. The limits against hostile clients (stream windows, streams
#: and calls per connection, header size, handshake timeout, receive and send time limits) are
#: microframe's and not the baseline's: what they cost is part of what is measured.
MAX_MESSAGE_BYTES = 4 << 20
MAX_CONCURRENT_RPCS = 1000
PENDING = max(10_000, 10 * MAX_CONCURRENT_RPCS)
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", PENDING),
    ("grpc.server.max_pending_requests_hard_limit", PENDING),
    ("grpc.max_unrequested_time_in_server", 3600),
]


class Greeter(hello_pb2_grpc.GreeterServicer):
    """The same work as the example controller ``say_hello``."""

    async def SayHello(self, request, context):  # noqa: N802 (generated name)
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return hello_pb2.HelloReply(message=f"Hello, {request.name or 'world'}!")


async def serve(
    host: str, port: int, loop_name: str, grpc_defaults: bool, grace: float, reuse_port: bool
) -> None:
    if grpc_defaults:
        server = grpc.aio.server()
    else:
        options = [o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"]
        options.append(("grpc.so_reuseport", 1 if reuse_port else 0))
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    hello_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY port={bound} pid={os.getpid()} loop={loop_name}", flush=True)
    await stop.wait()
    await server.stop(grace)


def run_processes(args: argparse.Namespace) -> int:
    """Run ``args.processes`` servers sharing one port (SO_REUSEPORT) until SIGTERM/SIGINT.

    The counterpart of ``runserver --workers N``: fresh interpreters (grpc does not survive a
    fork), one port; the parent only starts, watches and stops them.
    """
    reserved = None
    port = args.port
    if port == 0:
        reserved = socket.socket()
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((args.host, 0))
        port = reserved.getsockname()[1]
    command = [
        sys.executable, str(Path(__file__).resolve()), "--host", args.host, "--port", str(port),
        "--loop", args.loop, "--grace", str(args.grace), "--reuse-port",
    ]  # fmt: skip
    if args.grpc_defaults:
        command.append("--grpc-defaults")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)
    ]
    code = 0
    try:
        deadline = time.monotonic() + 30
        for child in children:
            assert child.stdout is not None
            line = ""
            while (
                not line.startswith("READY") and time.monotonic() < deadline and not stop.is_set()
            ):
                line = child.stdout.readline()
                if not line and child.poll() is not None:
                    raise SystemExit(f"a server process exited with code {child.returncode}")
        if stop.is_set():
            return 0
        pids = ",".join(str(c.pid) for c in children)
        print(f"READY port={port} pid={os.getpid()} loop={args.loop} processes={pids}", flush=True)
        while not stop.wait(0.2):
            if any(c.poll() is not None for c in children):
                print("a server process exited: stopping", file=sys.stderr, flush=True)
                code = 1
                break
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(args.grace + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if reserved is not None:
            reserved.close()
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052, help="0 picks a free port (printed)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--grpc-defaults",
        action="store_true",
        help="use grpc.aio.server() with no options instead of runserver's options",
    )
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    args = parser.parse_args(argv)
    if args.processes > 1:
        sys.exit(run_processes(args))
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            serve(args.host, args.port, args.loop, args.grpc_defaults, args.grace, args.reuse_port)
        )


if __name__ == "__main__":
    main()
