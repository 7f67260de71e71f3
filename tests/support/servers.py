"""Real server processes the tests start and talk to over real sockets: ``manage.py
runserver`` (:class:`ServerProcess`) and gunicorn serving the HTTP/JSON gateway
(:class:`GunicornProcess`), each on free loopback ports and stopped with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from microframe.test.ports import free_port

from support.env import ROOT, base_env
from support.polling import wait_until


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
        transport: str | None = None,
    ) -> None:
        """``manage``: the service's manage.py (run from its directory); ``reload``: keep the
        autoreloader of a DEBUG service; ``full_env``: the environment as it is, instead of
        :func:`base_env` with ``env``; ``preexec_fn``: run in the child before the server
        (set a resource limit...); ``transport``: runserver's ``--transport`` (default: the
        settings' ``GRPC["TRANSPORT"]``)."""
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
        if transport:
            args += ["--transport", transport]
        self.transport = transport
        args += list(extra_args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=manage.parent,
            env=full_env if full_env is not None else base_env(**(env or {})),
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes its workers too
            preexec_fn=preexec_fn,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_output(self, *texts: str, timeout: float = 5.0) -> str:
        """The output once it holds every one of ``texts``. Log records reach the file through
        the logging battery's writer thread, after what the test saw on the wire or in
        ``/metrics``: a line is waited for, within ``timeout``, never assumed already there."""
        wait_until(lambda: all(text in self.output for text in texts), timeout,
                   f"{texts} in the output of {self.address}")
        return self.output

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

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
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


class GunicornProcess:
    """A real gunicorn serving ``app`` (``package.wsgi``) from ``cwd`` on a free loopback port."""

    def __init__(
        self, cwd: Path, app: str, env: dict[str, str], *, workers: int = 1,
        extra: tuple[str, ...] = (),
    ) -> None:
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
            [sys.executable, "-m", "gunicorn", app, *extra], cwd=cwd, env=env, stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; the status, the headers (lower-case names) and the body."""
        import urllib.error
        import urllib.request

        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                headers_read = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers_read, response.read()
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
