"""Fixtures that start real servers on free loopback ports and talk to them over real sockets."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from microframe.test.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session", autouse=True)
def _configured_settings() -> None:
    """Configure in-process settings once (tests change them with override_settings)."""
    from microframe.conf import settings

    if not settings.configured:
        settings.configure()




def require_binary(name: str) -> str:
    """Return the path of ``name``; fail under CI when it is missing, skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc!r})")


def ruff_check(cwd: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    """``ruff check`` with this project's configuration (pyproject.toml), as a service sees it:
    microframe is an installed dependency there (third-party for isort), not first-party as in
    this repository."""
    import importlib.util

    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is required under CI (the dev extra installs it)")
        pytest.skip("ruff is not installed")
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache",
         "--config", str(ROOT / "pyproject.toml"), "--config", "lint.isort.known-first-party = []",
         *paths],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


_SESSION_REGISTRY_DIR = tempfile.mkdtemp(prefix="microframe-test-registry-")


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("MICROFRAME_SETTINGS_MODULE", None)
    env.pop("MICROFRAME_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Servers started by tests register in the session's own file registry.
    env.setdefault("MICROFRAME_REGISTRY_DIR", _SESSION_REGISTRY_DIR)
    env.update(extra)
    return env


def service_settings(
    tmp_path: Path,
    module: str,
    service: str,
    registry: dict[str, object],
    grpc: dict[str, object] | None = None,
    **extra: object,
) -> str:
    """Write a settings package ``module`` in ``tmp_path`` for a test service named ``service``
    (the test service's settings, with ``registry`` as REGISTRY, ``grpc`` over GRPC and every
    ``extra`` setting); return its dotted path. ``tmp_path`` must be on the server's PYTHONPATH."""
    package = tmp_path / module
    package.mkdir()
    (package / "__init__.py").write_text("")
    lines = ["from testservice.settings import *", f"SERVICE_NAME = {service!r}", f"REGISTRY = {registry!r}"]
    if grpc:
        lines.append(f"GRPC = {{**GRPC, **{grpc!r}}}")
    lines += [f"{name} = {value!r}" for name, value in extra.items()]
    (package / "settings.py").write_text("\n".join(lines) + "\n")
    return f"{module}.settings"


class ServerProcess:
    """A real ``manage.py runserver`` process on free loopback ports."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        settings: str | None = None,
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        manage: Path = ROOT / "manage.py",
        reload: bool = False,
        full_env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``manage``: the service's manage.py (run from its directory); ``reload``: keep the
        autoreloader of a DEBUG service; ``full_env``: the environment as it is, instead of
        :func:`base_env` with ``env``; ``preexec_fn``: run in the child before the server
        (set a resource limit...)."""
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        args = [
            sys.executable,
            str(manage),
            "runserver",
            self.address,
            "--metrics-port",
            str(self.metrics_port),
        ]
        if not reload:
            args.append("--noreload")
        if settings:
            args += ["--settings", settings]
        if workers != 1:
            args += ["--workers", str(workers)]
        args += list(extra_args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=manage.parent, env=full_env if full_env is not None else base_env(**(env or {})),
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes its workers too
            preexec_fn=preexec_fn,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 20.0) -> ServerProcess:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output}")
            with grpc.insecure_channel(self.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return reply.status == health_pb2.HealthCheckResponse.SERVING

        try:
            wait_until(serving, timeout, f"{self.address} to serve")
        except AssertionError:
            self.kill()
            raise AssertionError(f"server never served:\n{self.output}") from None
        return self

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


def say_hello(server: ServerProcess, name: str, metadata: tuple = ()) -> str:
    """Call the example Greeter's SayHello on ``server`` with a plain grpc channel; the message."""
    from example.generate import hello_pb2, hello_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        reply = hello_pb2_grpc.GreeterStub(channel).SayHello(
            hello_pb2.HelloRequest(name=name), metadata=metadata, timeout=10
        )
        return reply.message  # type: ignore[no-any-return]


@pytest.fixture
def fleet(tmp_path):
    """Start test-service processes registered in the test's own file registry (named
    ``name``; ``grpc`` updates their GRPC setting)."""
    registry_dir = tmp_path / "registry"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    started: list[ServerProcess] = []

    def start(
        name: str, count: int = 1, weight: int = 100, shutdown_delay: float = 0.0, tls: dict | None = None,
        grpc: dict | None = None,
    ) -> list[ServerProcess]:
        servers = []
        for _ in range(count):
            module = f"svc_{name}_{len(started)}"
            settings = service_settings(tmp_path, module, name, {
                "BACKEND": "microframe.contrib.registry.file.FileRegistry",
                "OPTIONS": {"directory": str(registry_dir), "ttl": 1.5},
                "CACHE_DIR": str(tmp_path / f"cache-{module}"),
                "WEIGHT": weight,
            }, grpc={"SHUTDOWN_DELAY": shutdown_delay, "TLS": tls, **(grpc or {})})
            server = ServerProcess(tmp_path, settings=settings, env=env)
            started.append(server)
            servers.append(server)
        for server in servers:
            if tls is None:
                server.wait_serving()
            else:  # the health check of wait_serving speaks plaintext
                wait_until(lambda s=server: "Serving gRPC on" in s.output, 20, "the TLS server to serve")
        return servers

    start.registry_dir = registry_dir  # type: ignore[attr-defined]
    yield start
    for server in started:
        server.kill()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real server processes; every one is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(**kwargs: object) -> ServerProcess:
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
def example_server(module_tmp: Path) -> Iterator[ServerProcess]:
    """The example service, as ``python manage.py runserver`` serves it."""
    server = ServerProcess(module_tmp).wait_serving()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def test_server(module_tmp: Path) -> Iterator[ServerProcess]:
    """The test service (misbehaving controllers, small limits)."""
    server = ServerProcess(module_tmp, settings="testservice.settings").wait_serving()
    yield server
    server.kill()


class GunicornProcess:
    """A real gunicorn serving ``app`` (``package.wsgi``) from ``cwd`` on a free loopback port."""

    def __init__(self, cwd: Path, app: str, env: dict[str, str], *, workers: int = 1, extra: tuple[str, ...] = ()) -> None:
        try:
            import gunicorn  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("gunicorn is required under CI (the dev extra installs it)")
            pytest.skip("gunicorn is not installed")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd.parent / f"gunicorn-{self.port}.log"
        self._log = open(self.log_path, "wb")
        env = {**env, "GATEWAY_BIND": f"127.0.0.1:{self.port}", "GATEWAY_WORKERS": str(workers)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, *extra], cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; the status, the headers (lower-case names) and the body."""
        import urllib.error
        import urllib.request

        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def wait_healthy(self, timeout: float = 30.0) -> GunicornProcess:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output}")
            return self.request("GET", "/healthz", timeout=2)[0] == 200

        try:
            wait_until(healthy, timeout, f"gunicorn on {self.url} to answer /healthz")
        except AssertionError:
            self.kill()
            raise AssertionError(f"the gateway never became healthy:\n{self.output}") from None
        return self

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
