"""A new service from the template, as a user makes one: ``startservice`` -> ``check`` -> its own
tests -> ``runserver`` -> ``call``; then an RPC added, ``genproto``, the stub written, served."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support.env import ruff_check
from support.servers import GunicornProcess, ServerProcess

pytestmark = pytest.mark.timeout(180)

LAYOUT = [
    "controller/__init__.py", "controller/orders.py", "idl/orders.proto", "generate/__init__.py",
    "generate/orders_pb2.py", "generate/orders_pb2.pyi", "generate/orders_pb2_grpc.py",
    "generate/orders_client.py", "app/__init__.py", "app/router.py", "conf/product/settings.yaml",
    "conf/test/settings.yaml", "scripts/start.sh", "model/__init__.py", "tests/__init__.py",
    "tests/test_orders.py", "manage.py", "settings.py", "wsgi.py", "gunicorn.conf.py", "Dockerfile",
    "README.md", "requirements.txt", "__init__.py", "conftest.py", "pytest.ini",
]

NEW_RPCS = """
  // Server streaming, with a well-known type and a message of another proto.
  rpc Countdown (CountdownRequest) returns (stream Tick);
}

message CountdownRequest {
  uint32 start = 1;
}

message Tick {
  uint32 left = 1;
  google.protobuf.Timestamp at = 2;
}
"""

COUNTDOWN_BODY = '''async def countdown(ctx, request: CountdownRequest):
    """Count down from ``request.start`` to 1."""
    for left in range(request.start, 0, -1):
        tick = Tick(left=left)
        tick.at.GetCurrentTime()
        yield tick
'''


def user_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: microframe installed, nothing of the test suite's path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_") and k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    env["MICROFRAME_REGISTRY_DIR"] = str(tmp / "registry")  # this test's registry, not the machine's
    env.update(extra)
    return env


def run(cwd: Path, *args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}


def start_service(tmp: Path, name: str = "orders", *args: str) -> Path:
    result = run(tmp, "-m", "microframe", "startservice", name, *args, env=user_env(tmp))
    assert result.returncode == 0, result.stderr
    assert f"Created the service {name!r}" in result.stdout
    return tmp / name


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("new")
    yield start_service(tmp)


def test_the_layout_is_complete_and_generated(service: Path) -> None:
    missing = [path for path in LAYOUT if not (service / path).is_file()]
    assert not missing
    assert (service / "manage.py").stat().st_mode & 0o111
    assert (service / "scripts" / "start.sh").stat().st_mode & 0o111
    assert "DO NOT EDIT" in (service / "app" / "router.py").read_text()
    assert 'SERVICE_NAME = "orders"' in (service / "settings.py").read_text()
    assert "service Orders" in (service / "idl" / "orders.proto").read_text()
    assert "class OrdersClient(ServiceClient)" in (service / "generate" / "orders_client.py").read_text()


def test_a_fresh_service_passes_check_genproto_check_and_its_own_tests(service: Path) -> None:
    env = user_env(service.parent)
    check = run(service, "manage.py", "check", env=env)
    assert check.returncode == 0, check.stderr
    assert "no issues" in check.stdout
    for overlay in ("product", "test"):
        checked = run(service, "manage.py", "check", env={**env, "MICROFRAME_ENV": overlay})
        assert checked.returncode == 0, (overlay, checked.stderr)
    fresh = run(service, "manage.py", "genproto", "--check", env=env)
    assert fresh.returncode == 0, fresh.stderr
    tests = run(service, "-m", "pytest", "-q", "-p", "no:cacheprovider", env=env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\b3 passed\b", tests.stdout), tests.stdout


def test_it_serves_and_answers_call_and_an_independent_client(service: Path) -> None:
    env = user_env(service.parent)
    # DEBUG is on in a new service: runserver runs under the autoreloader, as for a user.
    server = ServerProcess(service.parent, manage=service / "manage.py", reload=True, full_env=env).wait_serving()
    try:
        called = run(service, "manage.py", "call", "orders.Orders/SayHello", '{"name": "Ada"}', "--compact", env=env)
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == '{"message": "Hello, Ada!"}'
        # Not microframe's client nor the generated code: raw protobuf bytes over a grpc channel.
        with grpc.insecure_channel(server.address) as channel:
            raw = channel.unary_unary("/orders.Orders/SayHello")(b"\x0a\x03Bea", timeout=5)
        assert raw == b"\x0a\x0bHello, Bea!"
        # The HTTP/JSON gateway, as the service's README starts it: gunicorn orders.wsgi.
        gateway = GunicornProcess(service, "orders.wsgi", env).wait_healthy()
        try:
            status, _, body = gateway.request("GET", "/v1/hello/Cy")
            assert (status, json.loads(body)) == (200, {"message": "Hello, Cy!"})
            status, _, body = gateway.request("POST", "/orders.Orders/SayHello", '{"name": "Di"}')
            assert (status, json.loads(body)) == (200, {"message": "Hello, Di!"})
        finally:
            gateway.kill()
    finally:
        assert server.terminate() == 0, server.output


def test_an_added_rpc_gets_a_stub_and_answers_once_written(service: Path) -> None:
    env = user_env(service.parent)
    controller = service / "controller" / "orders.py"
    edited = controller.read_text().replace('f"Hello, {', 'f"Good day, {')
    controller.write_text(edited)
    proto = service / "idl" / "orders.proto"
    text = proto.read_text().replace('package orders;', 'package orders;\n\nimport "google/protobuf/timestamp.proto";')
    proto.write_text(text.replace("\n}\n", NEW_RPCS, 1))

    stale = run(service, "manage.py", "genproto", "--check", env=env)
    assert stale.returncode == 1 and "stale" in stale.stderr
    warned = run(service, "manage.py", "check", env=env)
    assert warned.returncode == 0 and "microframe.W005" in warned.stderr + warned.stdout

    generated = run(service, "manage.py", "genproto", env=env)
    assert generated.returncode == 0, generated.stderr
    after = controller.read_text()
    imported = (
        "from microframe import Unimplemented  # noqa: F401 - raised by the stubs genproto writes\n"
    )
    assert after.replace(imported, "", 1).startswith(edited), "genproto changed what the user wrote"
    # Its import joins the module's imports at the top, where the lint accepts it.
    assert imported + "from microframe.core.context import RequestContext\n" in after
    fresh = ruff_check(service.parent, "orders/controller/orders.py")
    assert fresh.returncode == 0, fresh.stdout
    assert "async def countdown(ctx, request):" in after
    assert "raise Unimplemented" in after
    assert 'rpc(Orders, "Countdown", orders.countdown)' in (service / "app" / "router.py").read_text()
    again = run(service, "manage.py", "genproto", env=env)
    assert "0 file(s) written" in again.stdout and controller.read_text() == after
    clean = run(service, "manage.py", "check", env=env)
    assert "no issues" in clean.stdout, clean.stderr

    server = ServerProcess(service.parent, manage=service / "manage.py", full_env=env).wait_serving()
    try:
        stub = run(service, "manage.py", "call", "orders.Orders/Countdown", '{"start": 2}', "--address", server.address, env=env)
        assert stub.returncode == 64 + grpc.StatusCode.UNIMPLEMENTED.value[0], stub.stderr
        assert "UNIMPLEMENTED" in stub.stderr
        hello = run(service, "manage.py", "call", "orders.Orders.SayHello", '{"name": "Ada"}', "--compact", "--address", server.address, env=env)
        assert hello.stdout.strip() == '{"message": "Good day, Ada!"}'
    finally:
        server.terminate()

    # The stub's body written by the user: the new RPC answers.
    start = after.index("async def countdown(")
    end = after.index("yield  # a server-streaming", start)
    end = after.index("\n", end) + 1
    written = after[:start] + COUNTDOWN_BODY + after[end:]
    written = written.replace("import HelloReply, HelloRequest", "import CountdownRequest, HelloReply, HelloRequest, Tick")
    controller.write_text(written)
    # Every stub implemented: the module is still lint-clean (nothing raises Unimplemented now).
    linted = ruff_check(service.parent, "orders/controller/orders.py")
    assert linted.returncode == 0, linted.stdout + written
    server = ServerProcess(service.parent, manage=service / "manage.py", full_env=env).wait_serving()
    try:
        ticks = run(service, "manage.py", "call", "orders.Orders/Countdown", '{"start": 3}', "--compact", "--address", server.address, env=env)
        assert ticks.returncode == 0, ticks.stderr
        lines = ticks.stdout.splitlines()
        assert [line.split('"left": ')[1].split(",")[0] for line in lines] == ["3", "2", "1"]
        assert all('"at": "20' in line for line in lines)  # a Timestamp, as RFC 3339 in JSON
    finally:
        server.terminate()


def test_a_broken_proto_changes_nothing(tmp_path: Path) -> None:
    service = start_service(tmp_path, "billing", "--port", "50999")
    env = user_env(tmp_path)
    proto = service / "idl" / "billing.proto"
    proto.write_text(proto.read_text() + "\nmessage Broken {\n  string name = 1\n}\n")
    before = snapshot(service)
    result = run(service, "manage.py", "genproto", env=env)
    assert result.returncode != 0
    assert re.search(r"billing\.proto:\d+:\d+", result.stderr), result.stderr
    assert "nothing was written" in result.stderr
    assert snapshot(service) == before
    assert '"PORT": 50999' in (service / "settings.py").read_text().replace("\n    ", "")


def test_startservice_refuses_bad_names_and_existing_targets(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    for name, message in [("9lives", "not a valid service name"), ("class", "not a valid service name"),
                          ("json", "conflicts with the name of an existing Python module"),
                          ("grpc", "conflicts with the name of an existing Python module")]:
        result = run(tmp_path, "-m", "microframe", "startservice", name, env=env)
        assert result.returncode == 1 and message in result.stderr, (name, result.stderr)
        assert not (tmp_path / name).exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    exists = run(tmp_path, "-m", "microframe", "startservice", "taken", env=env)
    assert exists.returncode == 1 and "already exists" in exists.stderr
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]
    bad_port = run(tmp_path, "-m", "microframe", "startservice", "pay", "--port", "70000", env=env)
    assert bad_port.returncode == 1 and "not a port number" in bad_port.stderr
    # DIR: the service goes in DIR/NAME, or in DIR itself when it is an empty directory named NAME.
    (tmp_path / "services" / "users").mkdir(parents=True)
    into = run(tmp_path, "-m", "microframe", "startservice", "users", "services/users", env=env)
    assert into.returncode == 0, into.stderr
    assert (tmp_path / "services" / "users" / "manage.py").is_file()
    under = run(tmp_path, "-m", "microframe", "startservice", "carts", "services", env=env)
    assert under.returncode == 0, under.stderr
    assert (tmp_path / "services" / "carts" / "generate" / "carts_pb2.py").is_file()


def _settings_ports(service: Path) -> tuple[int, int]:
    text = (service / "settings.py").read_text()
    grpc_port, metrics_port = (int(p) for p in re.findall(r'"PORT": (\d+)', text))
    return grpc_port, metrics_port


def test_each_new_service_gets_ports_of_its_own_written_everywhere_it_is_served(tmp_path: Path) -> None:
    orders, users = start_service(tmp_path, "orders"), start_service(tmp_path, "users")
    ports = {name: _settings_ports(service) for name, service in (("orders", orders), ("users", users))}
    assert ports["orders"] != ports["users"], ports
    for name, (grpc_port, metrics_port) in ports.items():
        assert metrics_port == grpc_port + 1 and 20000 <= grpc_port < 30000
        assert {grpc_port, metrics_port}.isdisjoint({50051, 9464})
        product = (tmp_path / name / "conf" / "product" / "settings.yaml").read_text()
        assert f"PORT: {grpc_port}" in product and f"PORT: {metrics_port}" in product
        assert f"EXPOSE {grpc_port} {metrics_port}" in (tmp_path / name / "Dockerfile").read_text()
    # A port of the pair taken here at render time: the next pair.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["orders"][1]))
        taken.listen()
        (tmp_path / "third").mkdir()
        moved = _settings_ports(start_service(tmp_path / "third", "orders"))
    assert moved != ports["orders"] and ports["orders"][1] not in moved


def test_the_ports_of_a_name_are_always_the_same_unless_taken() -> None:
    """The derivation itself, with the machine's ports replaced by a set of taken ones (the
    machine's own may be in use by anything)."""
    from microframe.management.commands.startservice import service_ports

    pair = service_ports("orders", is_free=lambda port: True)
    assert pair == service_ports("orders", is_free=lambda port: True) == (25324, 25325)
    assert service_ports("users", is_free=lambda port: True) != pair
    assert service_ports("orders", is_free=lambda port: port not in {25325}) == (25326, 25327)
    assert service_ports("orders", is_free=lambda port: port not in {25324, 25326}) == (25328, 25329)


def test_two_checkouts_of_a_service_do_not_share_a_registry_but_neighbours_do(tmp_path: Path) -> None:
    """Nothing configured (no MICROFRAME_REGISTRY_DIR): the file registry's directory belongs to
    the project root, the directory holding the service's package."""
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        start_service(tmp_path / checkout, "orders")
    start_service(tmp_path / "a", "users")
    env = {k: v for k, v in user_env(tmp_path).items() if k != "MICROFRAME_REGISTRY_DIR"}
    first = tmp_path / "a" / "orders"
    server = ServerProcess(tmp_path, manage=first / "manage.py", full_env=env).wait_serving()
    try:
        seen = run(tmp_path / "a" / "users", "manage.py", "register", "--list", "orders", env=env)
        assert server.address in seen.stdout, seen.stdout + seen.stderr
        other = run(tmp_path / "b" / "orders", "manage.py", "register", "--list", "orders", env=env)
        assert other.returncode == 0 and "No instance of 'orders'" in other.stdout, other.stdout
        called = run(tmp_path / "b" / "orders", "manage.py", "call", "orders.Orders/SayHello",
                     '{"name": "Ada"}', "--timeout", "3", env=env)
        assert called.returncode != 0 and server.address not in called.stdout
    finally:
        assert server.terminate() == 0, server.output


def test_the_template_pins_the_framework_that_renders_it() -> None:
    """startservice passes its version; cookiecutter run directly on the template uses the
    default of cookiecutter.json, which must follow the release."""
    import microframe
    from microframe.management.commands.startservice import TEMPLATE

    assert json.loads((TEMPLATE / "cookiecutter.json").read_text())["microframe_version"] == microframe.__version__
    assert "=={{ cookiecutter.microframe_version }}" in (
        TEMPLATE / "{{cookiecutter.python_package}}" / "requirements.txt"
    ).read_text()


def test_a_renamed_controller_is_reported_with_the_controller_to_fix(tmp_path: Path) -> None:
    """app/router.py is generated: the hint names the controller module and genproto, never the
    router (which says DO NOT EDIT)."""
    service = start_service(tmp_path, "shelf")
    env = user_env(tmp_path)
    controller = service / "controller" / "shelf.py"
    controller.write_text(controller.read_text().replace("async def say_hello(", "async def say_hi("))
    checked = run(service, "manage.py", "check", env=env)
    assert checked.returncode == 1 and "microframe.E010" in checked.stderr, checked.stderr
    assert "has no attribute 'say_hello'" in checked.stderr
    assert f"Define say_hello() in {controller} again" in checked.stderr
    assert "python manage.py genproto" in checked.stderr and "Fix " not in checked.stderr
    stubbed = run(service, "manage.py", "genproto", env=env)
    assert stubbed.returncode == 0 and "async def say_hello(ctx, request):" in controller.read_text()
    assert "no issues" in run(service, "manage.py", "check", env=env).stdout
