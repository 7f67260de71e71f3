"""The native transport's connection guard (microframe.core.connection_guard): what it counts
of well-behaved clients never gets one of their connections closed, and the limits it applies
hold against clients that break them (the attacks themselves: tests/core/test_hostile.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from microframe.conf import global_settings
from microframe.core.connection_guard import STALL_SLACK, accepted_connections
from microframe.core.router import load_routes
from microframe.core.transport import NativeTransport
from microframe.test import serve
from microframe.test.utils import override_settings

from example.generate import hello_pb2, hello_pb2_grpc
from support.polling import wait_until

Req = hello_pb2.HelloRequest


def native_settings(**grpc_settings: object) -> dict[str, object]:
    return {
        **global_settings.GRPC, "HOST": "127.0.0.1", "PORT": 0, "TRANSPORT": "native",
        **grpc_settings,
    }


async def test_well_behaved_clients_are_never_closed() -> None:
    """Every kind of call, flat out and idle, for twelve RECEIVE_TIMEOUTs of half a second:
    each stall window is short, so that the guard's count of what a connection sent has to
    be right, not merely generous. None of the connections is closed, every call succeeds,
    and the bytes the guard could not account for stay far below its slack."""
    with override_settings(GRPC=native_settings(RECEIVE_TIMEOUT=0.5), GREETING="Hello"):
        async with serve(routes=load_routes("testservice.router")) as server:
            assert isinstance(server.transport, NativeTransport)
            guard = server.transport.guard
            assert guard is not None
            worst: dict[str, int] = {}
            done = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    for conn in guard.connections.values():
                        if conn.history:
                            stalled = conn.history[0][1] - conn.credited
                            name = names.get(conn.peer, conn.peer)
                            worst[name] = max(worst.get(name, 0), stalled)
                    await asyncio.sleep(0.05)

            counts: dict[str, int] = {}

            async def flat_out(name: str, call) -> None:  # type: ignore[no-untyped-def]
                until = time.monotonic() + 6
                while time.monotonic() < until:
                    await call()
                    counts[name] = counts.get(name, 0) + 1

            # A connection each (grpc shares one between channels to the same address).
            own = [("grpc.use_local_subchannel_pool", 1)]
            channels = [grpc.aio.insecure_channel(server.address, options=own) for _ in range(6)]
            unary, streams, uploads, health, idle, cancelled = channels
            greeter = hello_pb2_grpc.GreeterStub(unary)
            streamer = hello_pb2_grpc.GreeterStub(streams)
            uploader = hello_pb2_grpc.GreeterStub(uploads)
            checker = health_pb2_grpc.HealthStub(health)
            impatient = hello_pb2_grpc.GreeterStub(cancelled)
            sequence = iter(range(10**9))

            async def hello() -> None:
                # Metadata that HPACK cannot index (a new value on every call), of every size.
                n = next(sequence)
                reply = await greeter.SayHello(
                    Req(name="x" * (n % 3000)), timeout=5,
                    metadata=[("x-request-id", f"{n:032x}"), ("x-pad", "p" * (n % 2000))],
                )
                assert reply.message

            async def replies() -> None:
                got = [r async for r in streamer.LotsOfReplies(Req(name="s" * 500, count=200), timeout=5)]
                assert len(got) == 200

            async def greetings() -> None:  # through the fallback
                reply = await uploader.LotsOfGreetings(
                    iter([Req(name=f"g{i}" * 100) for i in range(20)]), timeout=5
                )
                assert reply.message

            async def check() -> None:
                reply = await checker.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            async def give_up() -> None:  # calls cancelled by their deadline, mid-call
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await impatient.SayHello(Req(name="slow", delay_ms=300), timeout=0.05)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            async def reflect() -> None:  # reflection, through the fallback, then idle
                stub = reflection_pb2_grpc.ServerReflectionStub(idle)
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
                    assert answer.list_services_response.service
                    break

            # Each connection opened alone and named, as the guard sees it.
            names: dict[str, str] = {}

            async def connect(name: str, call) -> None:  # type: ignore[no-untyped-def]
                await call()
                await asyncio.to_thread(
                    wait_until, lambda: len(guard.connections) == len(names) + 1, 2, "a scan"
                )
                (peer,) = [c.peer for c in guard.connections.values() if c.peer not in names]
                names[peer] = name

            for name, call in [("greetings", greetings), ("reflect", reflect), ("hello", hello),
                               ("replies", replies), ("check", check), ("give_up", give_up)]:
                await connect(name, call)
            watcher = asyncio.create_task(watch())
            await asyncio.gather(
                *(flat_out("hello", hello) for _ in range(8)),
                flat_out("replies", replies),
                flat_out("greetings", greetings),
                flat_out("check", check),
                flat_out("give_up", give_up),
            )
            done.set()
            await watcher
            for channel in channels:
                await channel.close()
    assert guard.closed == {}, (guard.closed, worst)
    assert min(counts.values()) >= 5 and len(counts) == 5, counts
    assert len(worst) == 6, worst
    worst.pop("greetings")
    assert max(worst.values()) < STALL_SLACK / 2, worst


def _open_sockets(address: str, count: int) -> list[socket.socket]:
    """``count`` connections started at once (non-blocking: the server may let them wait)."""
    host, port = address.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, int(port)))
        sockets.append(sock)
    return sockets


def _server_side_open(sockets: list[socket.socket]) -> list[socket.socket]:
    """Those of ``sockets`` connected and not closed by the server."""
    alive = []
    for sock in sockets:
        try:
            sock.getpeername()
        except OSError:  # not connected (its SYN unanswered), or reset
            continue
        try:
            if sock.recv(65536) == b"":  # closed by the server
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        alive.append(sock)
    return alive


async def test_connections_past_max_connections_are_refused() -> None:
    """40 connections opened at once over a cap of 20, one of them a client's already: the
    newest past the cap are closed, new ones wait at the kernel, the client keeps being
    served, and connections are let in again once the others have gone."""
    with override_settings(GRPC=native_settings(MAX_CONNECTIONS=20), GREETING="Hello"):
        async with serve(routes=load_routes("testservice.router")) as server:
            guard = server.transport.guard
            async with grpc.aio.insecure_channel(server.address) as channel:
                greeter = hello_pb2_grpc.GreeterStub(channel)
                assert (await greeter.SayHello(Req(name="first"), timeout=5)).message
                await asyncio.to_thread(wait_until, lambda: len(guard.connections) == 1, 2, "a scan")
                attackers = _open_sockets(server.address, 40)
                started = time.monotonic()
                await asyncio.to_thread(
                    wait_until, lambda: len(_server_side_open(attackers)) <= 19, 2,
                    "the connections past the cap to be refused",
                )
                took = time.monotonic() - started
                assert guard.paused and guard.pauses >= 1
                # The oldest connection is kept: the channel made before is served still.
                assert (await greeter.SayHello(Req(name="during"), timeout=5)).message
                assert took < 1, took
                assert len(guard.connections) <= 20, len(guard.connections)
                for sock in attackers:
                    sock.close()
                await asyncio.to_thread(wait_until, lambda: not guard.paused, 3, "the listener to let connections in")
                own = [("grpc.use_local_subchannel_pool", 1)]
                async with grpc.aio.insecure_channel(server.address, options=own) as fresh:
                    reply = await hello_pb2_grpc.GreeterStub(fresh).SayHello(Req(name="after"), timeout=5)
                    assert reply.message


def test_the_scan_reads_only_the_servers_own_connections() -> None:
    """Its client sockets, its listener and other servers' connections are not the server's."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]
    elsewhere = socket.create_connection(other.getsockname())
    accepted_elsewhere = other.accept()[0]
    try:
        clients[0].sendall(b"x" * 1000)
        wait_until(lambda: accepted[0].recv(1000, socket.MSG_PEEK | socket.MSG_DONTWAIT), 2, "the bytes")
        found, found_listener = accepted_connections(port, {})
        assert found_listener is not None and found_listener[0] == listener.fileno()
        assert sorted(fd for fd, *_ in found) == sorted(s.fileno() for s in accepted)
        by_fd = {fd: (peer, received) for fd, _, peer, received, _, _ in found}
        assert by_fd[accepted[0].fileno()] == (
            f"ipv4:127.0.0.1:{clients[0].getsockname()[1]}", 1000,
        )
    finally:
        for sock in [listener, other, *clients, *accepted, elsewhere, accepted_elsewhere]:
            sock.close()
