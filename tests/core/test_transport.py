"""Transports: GRPC["TRANSPORT"], how one is chosen and checked, and the native transport
(pygrpc-native) serving the test service over loopback as grpc.aio does."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from microframe.conf import global_settings
from microframe.core.checks import run_checks
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.router import load_routes
from microframe.core.server import ServerConfig
from microframe.core.transport import (
    GrpcAioTransport,
    NativeTransport,
    choose_transport,
    native_available,
)
from microframe.test import serve
from microframe.test.utils import override_settings

from example.generate import hello_pb2, hello_pb2_grpc

Req = hello_pb2.HelloRequest
TEST_GRPC = {
    **global_settings.GRPC, "HOST": "127.0.0.1", "PORT": 0, "MAX_MESSAGE_BYTES": 64 * 1024,
}


def test_the_native_transport_is_installed_for_the_tests() -> None:
    # The dev extra installs it: its tests must never be skipped for want of it.
    assert native_available()


@pytest.mark.parametrize(
    ("choice", "transport", "reason"),
    [
        ("grpc.aio", GrpcAioTransport, 'GRPC["TRANSPORT"] is "grpc.aio"'),
        ("native", NativeTransport, 'GRPC["TRANSPORT"] is "native"'),
        # TLS: the native transport serves plaintext only, auto keeps grpc.aio.
        ("auto", GrpcAioTransport, "auto: the native transport does not apply GRPC TLS"),
    ],
)
def test_the_transport_is_chosen_with_its_reason(choice, transport, reason) -> None:
    config = ServerConfig(transport=choice)
    if choice == "auto":
        config.tls = {"CERT": "c", "KEY": "k"}
    chosen, why = choose_transport(config)
    assert isinstance(chosen, transport)
    assert why.startswith(reason)


def test_auto_picks_the_native_transport_on_the_default_settings() -> None:
    # Its connection guard applies every limit of the defaults (tests/core/test_hostile.py
    # attacks each on both transports).
    chosen, why = choose_transport(ServerConfig())
    assert isinstance(chosen, NativeTransport)
    assert why == "auto: the native extra is installed and applies every limit set"
    # A handshake allowed longer than the native front's own 120 s is not applied as asked.
    chosen, why = choose_transport(ServerConfig(handshake_timeout=300))
    assert isinstance(chosen, GrpcAioTransport)
    assert why == "auto: the native transport does not apply GRPC HANDSHAKE_TIMEOUT"


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match='"auto", "grpc.aio" or "native"'):
        choose_transport(ServerConfig(transport="quic"))
    with override_settings(GRPC={**TEST_GRPC, "TRANSPORT": "quic"}):
        assert "microframe.E001" in [m.id for m in run_checks(tags=["settings"])]


def test_check_reports_what_the_native_transport_applies_otherwise() -> None:
    with override_settings(GRPC={**TEST_GRPC, "TRANSPORT": "native"}):
        assert "microframe.W007" not in [m.id for m in run_checks(tags=["server"])]
    with override_settings(GRPC={**TEST_GRPC, "TRANSPORT": "native", "HANDSHAKE_TIMEOUT": 300}):
        found = {m.id: m for m in run_checks(tags=["server"])}
    assert 'GRPC["HANDSHAKE_TIMEOUT"]: a connection has 120 s to finish its HTTP/2 preface' in found[
        "microframe.W007"
    ].msg
    with override_settings(GRPC={**TEST_GRPC, "TRANSPORT": "native", "TLS": {"CERT": "x"}}):
        assert "microframe.E013" in [m.id for m in run_checks(tags=["server"])]


def test_the_check_command_says_which_transport_runserver_would_serve_on(tmp_path) -> None:
    import subprocess
    import sys

    from support.env import ROOT, base_env

    (tmp_path / "native_settings.py").write_text(
        "from example.settings import *  # noqa: F401,F403\n"
        'GRPC = {"TRANSPORT": "native", "HANDSHAKE_TIMEOUT": 300}\n'
    )
    env = base_env(PYTHONPATH=f"{tmp_path}:{ROOT}:{ROOT / 'tests'}")

    def check(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "check", *args], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert "Transport: native (auto: the native extra is installed and applies every limit set)" \
        in check()
    native = check("--settings", "native_settings")
    assert 'Transport: native (GRPC["TRANSPORT"] is "native")' in native
    assert "microframe.W007" in native
    assert "Transport:" not in check("--tag", "settings")


# The native transport, serving the test service. --------------------------------------------


@pytest.fixture
async def native():
    with override_settings(GRPC={**TEST_GRPC, "TRANSPORT": "native"}, GREETING="Hello"):
        async with serve(routes=load_routes("testservice.router")) as server:
            assert isinstance(server.transport, NativeTransport)
            async with grpc.aio.insecure_channel(server.address) as channel:
                yield channel


async def test_every_rpc_kind_on_the_native_transport(native) -> None:
    greeter = hello_pb2_grpc.GreeterStub(native)
    assert (await greeter.SayHello(Req(name="Ada"), timeout=5)).message.endswith("Ada!")
    replies = [r.message async for r in greeter.LotsOfReplies(Req(name="Bo", count=3), timeout=5)]
    assert len(replies) == 3

    async def names():
        for name in ("a", "b"):
            yield Req(name=name)

    assert "a" in (await greeter.LotsOfGreetings(names(), timeout=5)).message
    assert len([r async for r in greeter.BidiHello(names(), timeout=5)]) == 2


@pytest.mark.parametrize(
    ("name", "code", "details"),
    [
        ("notfound", grpc.StatusCode.NOT_FOUND, "no such greeting"),
        ("raise", grpc.StatusCode.INTERNAL, None),
        ("wrongtype", grpc.StatusCode.INTERNAL, None),
    ],
)
async def test_errors_keep_their_code_on_the_native_transport(native, name, code, details):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await hello_pb2_grpc.GreeterStub(native).SayHello(Req(name=name), timeout=5)
    assert info.value.code() == code
    if details is not None:
        assert info.value.details() == details
    if name == "notfound":
        assert ("x-reason", "missing") in tuple(info.value.trailing_metadata() or ())


async def test_junk_and_oversized_requests_on_the_native_transport(native) -> None:
    raw = native.unary_unary("/helloworld.Greeter/SayHello")
    with pytest.raises(grpc.aio.AioRpcError) as junk:
        await raw(b"\xff\xff\xff", timeout=5)
    assert junk.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    big = Req(name="x" * (70 * 1024)).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as oversized:
        await raw(big, timeout=5)
    assert oversized.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_and_reflection_on_the_native_transport(native) -> None:
    health = health_pb2_grpc.HealthStub(native)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(native)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = [
        s.name
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5)
        for s in answer.list_services_response.service
    ]
    assert "helloworld.Greeter" in names
