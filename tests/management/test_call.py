"""``manage.py call``: any RPC by name, protobuf JSON in and out, against a real server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.env import ROOT, base_env, service_settings
from support.servers import ServerProcess

pytestmark = pytest.mark.timeout(120)

METHOD = "helloworld.Greeter/SayHello"


class Service:
    """The test service, registered as ``call-test`` in a file registry of its own."""

    def __init__(self, tmp: Path, transport: str) -> None:
        self.tmp = tmp
        self.registry = {
            "BACKEND": "microframe.contrib.registry.file.FileRegistry",
            "OPTIONS": {"directory": str(tmp / "registry"), "ttl": 5},
            "CACHE_DIR": str(tmp / "cache"),
        }
        self.settings = service_settings(tmp, "callsvc", "call-test", self.registry)
        self.env = {"PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), str(ROOT / "tests")])}
        self.server = ServerProcess(tmp, settings=self.settings, env=self.env, transport=transport).wait_serving()

    def call(self, *args: str, settings: str | None = "", stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py call`` as a user would, with this service's settings by default;
        ``settings=None``: ``microframe-admin call``, outside any service."""
        if settings is None:
            command = [sys.executable, "-m", "microframe", "call", *args]
        else:
            command = [sys.executable, str(ROOT / "manage.py"), "call", *args, "--settings", settings or self.settings]
        return subprocess.run(
            command, cwd=cwd, env=base_env(**self.env), input=stdin, capture_output=True, text=True, timeout=60,
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("call"), transport)
    yield svc
    svc.server.kill()


def replies(result: subprocess.CompletedProcess[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_unary_through_discovery_and_direct(service: Service) -> None:
    # No --address: the router serves helloworld.Greeter, so SERVICE_NAME is discovered.
    found = service.call(METHOD, '{"name": "Ada"}')
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {"message": "Hello, Ada!"}
    direct = service.call("helloworld.Greeter.SayHello", '{"name": "Bo"}', "--address", service.server.address, "--compact")
    assert replies(direct) == [{"message": "Hello, Bo!"}]
    short = service.call("Greeter/SayHello", "--address", service.server.address, "--compact", "--emit-defaults")
    assert replies(short) == [{"message": "Hello, !"}]


def test_streams_in_every_direction(service: Service) -> None:
    a = ("--address", service.server.address, "--compact")
    served = replies(service.call("helloworld.Greeter/LotsOfReplies", '{"name": "s", "count": 3}', *a))
    assert [r["message"].split(":")[0] for r in served] == ["0", "1", "2"]
    gathered = service.call("helloworld.Greeter/LotsOfGreetings", '[{"name": "a"}, {"name": "b"}]', *a)
    assert replies(gathered) == [{"message": "a,b"}]
    bidi = service.call("helloworld.Greeter/BidiHello", "-", *a, stdin='[{"name": "x"}, {"name": "y"}]')
    assert replies(bidi) == [{"message": "X"}, {"message": "Y"}]


def test_request_from_a_file_and_metadata_reaches_the_server(service: Service) -> None:
    request = service.tmp / "request.json"
    request.write_text('{"name": "metadata:x-tenant"}')
    result = service.call(METHOD, f"@{request}", "-H", "x-tenant=acme", "--metadata", "X-Other=1", "--compact")
    assert replies(result) == [{"message": "'acme'"}]


def test_errors_print_the_code_and_exit_non_zero(service: Service) -> None:
    notfound = service.call(METHOD, '{"name": "notfound"}')
    assert notfound.returncode == 64 + 5
    assert "ERROR: NOT_FOUND: no such greeting" in notfound.stderr
    assert notfound.stdout == ""
    late = service.call(METHOD, '{"name": "slow", "delayMs": 2000}', "--timeout", "0.2")
    assert late.returncode == 64 + 4, late.stderr
    assert "DEADLINE_EXCEEDED" in late.stderr
    nobody = service.call(METHOD, "{}", "--address", "127.0.0.1:1", "--timeout", "2")
    assert nobody.returncode == 64 + 14, nobody.stderr
    assert "UNAVAILABLE" in nobody.stderr


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[ServerProcess]:
    """The orders service: validation rules in its proto, a declared error."""
    server = ServerProcess(tmp_path_factory.mktemp("call-orders"), settings="orders.settings", transport=transport)
    yield server.wait_serving()
    server.kill()


def test_errors_print_their_details_as_json(service: Service, orders: ServerProcess) -> None:
    a = ("--address", orders.address)
    invalid = service.call("orders.v1.Orders/Create", '{"customer": "", "lines": [{"sku": "a", "quantity": 1}]}', *a,
                           settings="orders.settings")
    assert invalid.returncode == 64 + 3, invalid.stderr
    assert invalid.stdout == ""
    status, _, details = invalid.stderr.partition("\n")
    assert status == "ERROR: INVALID_ARGUMENT: invalid CreateOrder: customer: must be at least 1 characters"
    assert details.startswith("[\n  {\n")  # pretty
    assert json.loads(details) == [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "customer", "description": "must be at least 1 characters"}],
    }]
    declared = service.call("orders.v1.Orders/Get", '{"id": "o-9"}', *a, "--compact", settings="orders.settings")
    assert declared.returncode == 64 + 5, declared.stderr
    assert declared.stderr.splitlines() == [
        "ERROR: NOT_FOUND: no order 'o-9'",
        '[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ORDER_NOT_FOUND", '
        '"domain": "orders.example.com", "metadata": {"order_id": "o-9"}}]',
    ]
    # Through reflection, from outside any service: the same.
    reflected = service.call("orders.v1.Orders/Create", '{"customer": "ann"}', *a, "--reflection", "--compact",
                             settings=None, cwd=orders.log_path.parent)
    assert reflected.returncode == 64 + 3, reflected.stderr
    assert json.loads(reflected.stderr.splitlines()[1]) == [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "lines", "description": "must contain at least 1 item(s)"}],
    }]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((METHOD, '{"nmae": "x"}'), 'no field named "nmae"'),
        ((METHOD, "{"), "The request is not JSON"),
        ((METHOD, '[{"name": "x"}]'), "takes one request"),
        (("helloworld.Greeter/Nope",), "has no method 'Nope'"),
        (("nosuch.Service/Get",), "Unknown service 'nosuch.Service'"),
        (("justaword",), "is not a method"),
        ((METHOD, "-H", "novalue"), "is not key=value"),
        ((METHOD, "--address", "nohost"), "--address"),
    ],
)
def test_bad_input_is_refused_clearly(service: Service, args: tuple[str, ...], message: str) -> None:
    result = service.call(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_reflection_from_outside_any_service(service: Service, tmp_path: Path) -> None:
    # No settings at all: the descriptors come from the server's reflection service.
    a = ("--address", service.server.address, "--compact")
    without = service.call(METHOD, '{"name": "r"}', *a, settings=None, cwd=tmp_path)
    assert without.returncode == 1 and "Unknown service" in without.stderr and "--reflection" in without.stderr
    result = service.call(METHOD, '{"name": "r"}', *a, "--reflection", settings=None, cwd=tmp_path)
    assert replies(result) == [{"message": "Hello, r!"}]
    stream = service.call("helloworld.Greeter/BidiHello", '[{"name": "p"}, {"name": "q"}]', *a, "--reflection",
                          settings=None, cwd=tmp_path)
    assert replies(stream) == [{"message": "P"}, {"message": "Q"}]
    health = service.call("grpc.health.v1.Health/Check", *a, settings=None, cwd=tmp_path)
    assert replies(health) == [{"status": "SERVING"}]
    # Reflection through discovery: the instance is found by --service in the registry.
    env_settings = service_settings(tmp_path, "bare", "someone-else", service.registry)
    via_registry = service.call(METHOD, '{"name": "d"}', "--reflection", "--service", "call-test", "--compact",
                                "--pythonpath", str(tmp_path), settings=env_settings)
    assert replies(via_registry) == [{"message": "Hello, d!"}]


def test_reflection_from_a_server_that_never_answers_is_bounded(service: Service, tmp_path: Path) -> None:
    import threading
    import time
    from concurrent import futures

    import grpc

    release = threading.Event()

    def hang(requests, context):  # accepts the reflection call, never answers
        release.wait(30)
        return iter(())

    handler = grpc.method_handlers_generic_handler(
        "grpc.reflection.v1alpha.ServerReflection", {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(hang)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        started = time.monotonic()
        result = service.call(METHOD, "--address", f"127.0.0.1:{port}", "--reflection", "--timeout", "1",
                              settings=None, cwd=tmp_path)
        assert time.monotonic() - started < 15
        assert result.returncode == 1 and "DEADLINE_EXCEEDED" in result.stderr, result.stderr
    finally:
        release.set()
        server.stop(0)


def test_standard_services_go_to_this_service(service: Service) -> None:
    """Health and reflection belong to every server: without --address they are called on the
    service of the settings (SERVICE_NAME, through discovery), not on a service named after
    their proto package ("no instance of 'grpc.health.v1'")."""
    health = service.call("grpc.health.v1.Health/Check", "--compact")
    assert replies(health) == [{"status": "SERVING"}]
    named = service.call(
        "grpc.health.v1.Health/Check", '{"service": "helloworld.Greeter"}', "--compact"
    )
    assert replies(named) == [{"status": "SERVING"}]
    listed = service.call(
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", '[{"listServices": ""}]',
        "--compact",
    )
    (reply,) = replies(listed)
    names = {s["name"] for s in reply["listServicesResponse"]["service"]}
    assert {"helloworld.Greeter", "grpc.health.v1.Health"} <= names


def test_no_instance_says_how_to_fix_it(service: Service, tmp_path: Path) -> None:
    """When discovery finds no instance, the error says what to do: --address, or start or
    register the service, and which registry was searched."""
    empty = tmp_path / "empty-registry"
    registry = {
        "BACKEND": "microframe.contrib.registry.file.FileRegistry",
        "OPTIONS": {"directory": str(empty)},
        "CACHE_DIR": str(tmp_path / "cache"),
    }
    lonely = service_settings(tmp_path, "lonely", "lonely-svc", registry)
    pythonpath = ("--pythonpath", str(tmp_path))
    cases = {
        "lonely-svc": service.call("grpc.health.v1.Health/Check", *pythonpath, settings=lonely),
        "ghost": service.call(METHOD, "--service", "ghost", *pythonpath, settings=lonely),
        "spirit": service.call(METHOD, "--service", "spirit", "--reflection", *pythonpath,
                               settings=lonely),
    }
    for name, result in cases.items():
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert f"No instance of {name!r} is registered" in result.stderr, result.stderr
        assert f"file registry in {empty}" in result.stderr, result.stderr
        assert "--address HOST:PORT" in result.stderr, result.stderr
        assert "runserver" in result.stderr and "register" in result.stderr, result.stderr
    assert "SERVICE_NAME" in cases["lonely-svc"].stderr
    assert "--service" in cases["ghost"].stderr
