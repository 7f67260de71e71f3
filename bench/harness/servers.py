"""The servers compared, and starting and stopping them with bounded waits.

A ``Config`` says what to start: the bare grpc.aio baseline (``bench/bare_server.py``) or the
example service (``manage.py runserver``), with its loop, workers and settings.
``ServerUnderTest`` starts one in its own session, waits until it really serves (its line on
stdout, every worker listening, the health service SERVING) and stops it, its workers included,
also on failure. ``wait_for`` is the bounded wait of the other processes the scripts start
(etcd, redis, a server registering itself).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from microframe.test import free_port

from . import BENCH, ROOT, BenchError
from .sampling import children_of, holds_listener, listen_inodes

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Config:
    """One configuration compared: what to start, and its key and label in the tables."""

    key: str
    label: str
    kind: str  # "bare" or "runserver"
    loop: str = ""  # bare: asyncio/uvloop
    workers: int = 1
    settings: str | None = None  # runserver: a --settings module, None for the default
    extra: tuple[str, ...] = ()  # runserver: more arguments


def configurations(dev_settings: str | None, extra: tuple[str, ...] = ()) -> dict[str, Config]:
    """The configurations of ``bench/run.py`` by key; ``dev_settings`` is the settings module of
    (c) and (d) (None: the example's), ``extra`` more arguments of every runserver command."""
    configs = {
        "a": Config("a", "bare grpc.aio, asyncio loop", "bare", loop="asyncio"),
        "b": Config("b", "bare grpc.aio, uvloop", "bare", loop="uvloop"),
        "b2": Config("b2", "bare grpc.aio, uvloop, 2 processes", "bare", loop="uvloop", workers=2),
        "ca": Config(
            "ca",
            'example, default stack on grpc.aio, EVENT_LOOP="asyncio"',
            "runserver",
            settings="bench_asyncio_settings",
            extra=GRPC_AIO,
        ),
        "c": Config(
            "c",
            "example, default settings, --transport grpc.aio (= --workers 1)",
            "runserver",
            settings=dev_settings,
            extra=GRPC_AIO,
        ),
        "d": Config(
            "d",
            "example, default settings, --transport grpc.aio --workers 2",
            "runserver",
            workers=2,
            settings=dev_settings,
            extra=GRPC_AIO,
        ),
        "n": Config(
            "n",
            "example, default settings, --transport native (= auto with the extra)",
            "runserver",
            settings=dev_settings,
            extra=NATIVE,
        ),
        "n2": Config(
            "n2",
            "example, default settings, --transport native --workers 2",
            "runserver",
            workers=2,
            settings=dev_settings,
            extra=NATIVE,
        ),
    }
    return {
        k: replace(c, extra=c.extra + extra) if c.kind == "runserver" else c
        for k, c in configs.items()
    }


#: runserver's arguments of the configurations on each transport: the default settings pick
#: native when the native extra is installed ("auto"), so grpc.aio is asked for by name.
NATIVE = ("--transport", "native")
GRPC_AIO = ("--transport", "grpc.aio")


def write_helper_settings(directory: Path, dev_settings: str | None) -> None:
    """Write the settings module of (ca): the one under test, with the asyncio loop forced."""
    base = dev_settings or "example.settings"
    (directory / "bench_asyncio_settings.py").write_text(
        f'"""{base}, with the default asyncio event loop forced."""\n'
        f"from {base} import *  # noqa: F401,F403\n"
        f"from {base} import GRPC as _GRPC\n\n"
        'GRPC = dict(_GRPC, EVENT_LOOP="asyncio")\n'
    )


def wait_for(
    ready: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll ``ready`` until it is true (True), ``timeout`` s pass or ``proc`` exits (False).

    For processes that say they are ready in no way a caller could wait on (a file appearing,
    a port accepting connections, an HTTP health endpoint): polled every 50 ms.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.05)
    return True


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def child_env(extra_path: Path) -> dict[str, str]:
    """The environment of a server: this checkout and ``extra_path`` (the scripts' settings
    modules) importable, none of the caller's settings or multiprocess-metrics variables."""
    env = dict(os.environ)
    for name in ("MICROFRAME_SETTINGS_MODULE", "MICROFRAME_ENV", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(extra_path), env.get("PYTHONPATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerUnderTest:
    """One server process (and its workers), started and stopped with bounded waits."""

    def __init__(self, config: Config, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        """Start ``config``'s server on a free port, its output in a log of ``workdir``;
        ``env``: more environment variables for it."""
        self.config = config
        self.port = free_port()
        self.log_path = workdir / f"server-{config.key}-{self.port}.log"
        if config.kind == "bare":
            args = [
                sys.executable,
                str(BENCH / "bare_server.py"),
                "--port",
                str(self.port),
                "--loop",
                config.loop,
            ]
            if config.workers != 1:
                args += ["--processes", str(config.workers)]
        else:
            args = [
                sys.executable,
                str(ROOT / "manage.py"),
                "runserver",
                f"127.0.0.1:{self.port}",
                "--noreload",
                "--metrics-port",
                "0",
            ]
            if config.workers != 1:
                args += ["--workers", str(config.workers)]
            if config.settings:
                args += ["--settings", config.settings]
            args += list(config.extra)
        self.args = args
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**child_env(workdir), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        """What the server has printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def fail(self, message: str) -> BenchError:
        """A ``BenchError`` saying ``message`` with the end of the server's output."""
        tail = "\n".join(self.output.splitlines()[-30:])
        return BenchError(f"({self.config.key}) {message}\n--- server output ---\n{tail}")

    def serving_pids(self) -> list[int]:
        """The processes that serve calls: the server, or the workers of a supervisor."""
        if self.config.workers > 1:
            return children_of(self.proc.pid)
        return [self.proc.pid]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server serves: its line printed, every worker listening, and (the
        example) its health service SERVING; raise ``BenchError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        marker = "READY port=" if self.config.kind == "bare" else "Serving gRPC on"
        while marker not in self.output:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with code {self.proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise self.fail(f"not serving after {timeout:.0f} s")
            time.sleep(0.02)
        if self.config.workers > 1:
            # The supervisor prints its line before the workers are up: wait for every worker
            # to hold a listening socket on the port.
            while True:
                pids = children_of(self.proc.pid)
                inodes = listen_inodes(self.port)
                if len(pids) >= self.config.workers and all(
                    holds_listener(p, inodes) for p in pids
                ):
                    break
                if self.proc.poll() is not None:
                    raise self.fail(f"exited with code {self.proc.returncode} before serving")
                if time.monotonic() > deadline:
                    raise self.fail(
                        f"{self.config.workers} workers not listening after {timeout:.0f} s"
                    )
                time.sleep(0.05)
        if self.config.kind == "runserver":
            self.wait_health(deadline)
            self.check_transport()

    def check_transport(self) -> None:
        """Raise ``BenchError`` unless the server runs on the transport its ``--transport``
        asks for (read from its ``transport NAME (...)`` log line)."""
        args = list(self.config.extra)
        if "--transport" not in args:
            return
        wanted = args[args.index("--transport") + 1]
        # Logged once the server serves: a moment after its health says SERVING.
        if not wait_for(lambda: f"transport {wanted} (" in self.output, 5, self.proc):
            raise self.fail(f"does not say it serves on the {wanted} transport")

    def wait_health(self, deadline: float) -> None:
        """Wait until the gRPC health service answers SERVING (the example's last step of
        start-up), until ``deadline`` (a ``time.monotonic()`` value)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as err:
                last = err
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise self.fail(f"health check never SERVING (last error: {last!r})")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the whole process group after ``STOP_TIMEOUT`` s."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  ({self.config.key}) did not stop on SIGTERM, killing it", file=sys.stderr)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # Workers left behind by a killed supervisor are in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@contextlib.contextmanager
def running(
    config: Config, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[ServerUnderTest]:
    """``config``'s server, serving, for the ``with`` block; stopped at its end."""
    server = ServerUnderTest(config, workdir, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
