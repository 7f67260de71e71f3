"""Fixtures that start real servers on free loopback ports and talk to them over real sockets.

What a test imports by name (paths, environments, server processes, real backends) is in
``tests/support/``; this module only holds fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.env import ROOT, require_native, service_settings
from support.polling import wait_until
from support.servers import ServerProcess

#: The etcd fixtures (etcd, etcd3, make_cluster, prefix) of every test that meets real etcd.
pytest_plugins = ["support.etcd_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _configured_settings() -> None:
    """Configure in-process settings once (tests change them with override_settings)."""
    from microframe.conf import settings

    if not settings.configured:
        settings.configure()


#: The transports every server fixture runs on (microframe.core.transport).
TRANSPORTS = ("grpc.aio", "native")


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The server transport of the test: every test using a server fixture runs on each."""
    if request.param == "native":
        require_native()
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fleet(tmp_path, transport):
    """Start test-service processes registered in the test's own file registry (named
    ``name``; ``grpc`` updates their GRPC setting, ``metadata`` is their registry metadata,
    ``extra`` more settings)."""
    registry_dir = tmp_path / "registry"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    started: list[ServerProcess] = []

    def start(
        name: str, count: int = 1, weight: int = 100, shutdown_delay: float = 0.0, tls: dict | None = None,
        grpc: dict | None = None, metadata: dict | None = None, extra: dict | None = None,
    ) -> list[ServerProcess]:
        servers = []
        for _ in range(count):
            module = f"svc_{name}_{len(started)}"
            settings = service_settings(tmp_path, module, name, {
                "BACKEND": "microframe.contrib.registry.file.FileRegistry",
                "OPTIONS": {"directory": str(registry_dir), "ttl": 1.5},
                "CACHE_DIR": str(tmp_path / f"cache-{module}"),
                "WEIGHT": weight,
                "METADATA": metadata or {},
            }, grpc={"SHUTDOWN_DELAY": shutdown_delay, "TLS": tls, **(grpc or {})}, **(extra or {}))
            server = ServerProcess(tmp_path, settings=settings, env=env, transport=transport)
            started.append(server)
            servers.append(server)
        for server in servers:
            if tls is None:
                server.wait_serving()
            else:  # the health check of wait_serving speaks plaintext
                def serving(s: ServerProcess = server) -> bool:
                    if s.proc.poll() is not None:
                        raise AssertionError(f"server exited with {s.proc.returncode}:\n{s.output}")
                    return "Serving gRPC on" in s.output

                wait_until(serving, 20, "the TLS server to serve")
        return servers

    start.registry_dir = registry_dir  # type: ignore[attr-defined]
    yield start
    for server in started:
        server.kill()


@pytest.fixture
def start_server(tmp_path: Path, transport: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start real server processes; every one is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(**kwargs: object) -> ServerProcess:
        kwargs.setdefault("transport", transport)
        server = ServerProcess(tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.wait_serving()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def example_server(module_tmp: Path, transport: str) -> Iterator[ServerProcess]:
    """The example service, as ``python manage.py runserver`` serves it."""
    server = ServerProcess(module_tmp, transport=transport).wait_serving()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def test_server(module_tmp: Path, transport: str) -> Iterator[ServerProcess]:
    """The test service (misbehaving controllers, small limits)."""
    server = ServerProcess(module_tmp, settings="testservice.settings", transport=transport).wait_serving()
    yield server
    server.kill()

