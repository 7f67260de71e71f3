"""``runserver``: serve the service's RPCs over gRPC, with health, reflection and /metrics."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from microframe.conf import dict_setting
from microframe.core.serving import AddressInUse, Role, ServingProcess
from microframe.core.signals import serving_starting, serving_stopped
from microframe.core.supervisor import PARENT_PID_ENV, WORKER_ID_ENV, Supervisor, die_with_parent
from microframe.management.base import BaseCommand, CommandError, CommandParser

RUN_MAIN_ENV = "MICROFRAME_RUN_MAIN"
WORKER_ADDR_ENV = "MICROFRAME_WORKER_ADDR"

ADDR_RE = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:]+))?:?(?P<port>\d+)?$")


def parse_addrport(value: str) -> tuple[str | None, int | None]:
    """Parse ``HOST:PORT``, ``PORT``, ``HOST:`` or ``[::1]:PORT``."""
    if value.isdigit():
        value = f":{value}"
    match = ADDR_RE.match(value)
    if not match or not (match["ipv6"] or match["host"] or match["port"]):
        raise CommandError(f'"{value}" is not a valid HOST:PORT or PORT.')
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 <= port <= 65535:
        raise CommandError(f"Port {port} is out of range (0-65535).")
    return match["ipv6"] or match["host"], port


def new_event_loop_factory(choice: str) -> Any:
    """Return the loop factory: uvloop when asked for, or when "auto" and it is installed."""
    if choice not in ("auto", "asyncio", "uvloop"):
        raise CommandError(f'GRPC["EVENT_LOOP"] must be auto, asyncio or uvloop, not {choice!r}.')
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CommandError(
                'GRPC["EVENT_LOOP"] is "uvloop" but uvloop is not installed.'
            ) from None
        return None
    return uvloop.new_event_loop


def stop_sequence_seconds() -> float:
    """Seconds a server takes at most to stop after SIGTERM: ``GRPC["SHUTDOWN_DELAY"]``, then
    ``GRPC["GRACE"]`` for the calls in flight."""
    grpc = dict_setting("GRPC")
    return float(grpc["SHUTDOWN_DELAY"]) + float(grpc["GRACE"])


def _worker_command(argv: list[str]) -> list[str]:
    """Return the command line of a worker: this one, without --workers, with --noreload."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [*out, "--noreload", "--skip-checks"]


class Command(BaseCommand):
    help = (
        "Serve the service's RPCs over gRPC (grpc.aio) with health, reflection and a Prometheus "
        "endpoint. Reloads on code change when DEBUG is true."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        from microframe.core.transport import TRANSPORTS

        parser.add_argument(
            "addrport", nargs="?",
            help='Address to serve on: "HOST:PORT" or "PORT" (default: GRPC HOST and PORT).',
        )
        parser.add_argument(
            "--noreload", action="store_false", dest="use_reloader",
            help="Do not reload on code changes.",
        )
        parser.add_argument(
            "--workers", type=int, default=1, help="Worker processes sharing the port (default 1)."
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None,
            help='Port of the /metrics endpoint (default: METRICS["PORT"]; 0 picks a free one).',
        )
        parser.add_argument(
            "--transport", choices=TRANSPORTS, default=None,
            help='The server transport for this run (default: GRPC["TRANSPORT"]).',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        import microframe
        from microframe.conf import settings

        microframe.setup()
        addrport = options["addrport"]
        if os.environ.get(WORKER_ID_ENV) and os.environ.get(WORKER_ADDR_ENV):
            addrport = os.environ[WORKER_ADDR_ENV]
        host, port = parse_addrport(addrport) if addrport else (None, None)
        host = host or settings.GRPC["HOST"]
        self.port_given = port is not None
        port = settings.GRPC["PORT"] if port is None else port
        workers = options["workers"]
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        self.transport = options["transport"]
        metrics_port = options["metrics_port"]
        self.metrics_port_given = metrics_port is not None
        if metrics_port is None:
            metrics_port = settings.METRICS["PORT"]
        if not 0 <= metrics_port <= 65535:
            raise CommandError(f"Metrics port {metrics_port} is out of range (0-65535).")

        if not os.environ.get(RUN_MAIN_ENV) and not os.environ.get(WORKER_ID_ENV):
            # Before anything binds, with both ports named when both are taken; under the
            # reloader, here, where the status reaches the shell (the reloader would restart a
            # child that cannot bind, and keep watching).
            self.refuse_ports_in_use(host, port, metrics_port)
        if options["use_reloader"] and settings.DEBUG and not os.environ.get(RUN_MAIN_ENV) \
                and not os.environ.get(WORKER_ID_ENV):
            return self.run_with_reloader()
        if workers > 1 and not os.environ.get(WORKER_ID_ENV):
            return self.run_supervisor(host, port, workers, metrics_port)
        return self.run_worker(host, port, metrics_port)

    # -- one process serving -------------------------------------------------------------------

    def run_worker(self, host: str, port: int, metrics_port: int) -> None:
        from microframe.conf import settings
        from microframe.core.router import RouterImportError, load_routes
        from microframe.core.server import Server, ServerConfig

        in_pool = bool(os.environ.get(WORKER_ID_ENV))
        if in_pool:
            parent = os.environ.get(PARENT_PID_ENV)
            die_with_parent(int(parent) if parent and parent.isdigit() else None)
        elif os.environ.get(RUN_MAIN_ENV):
            die_with_parent(os.getppid())  # the reloader's child
        try:
            routes = load_routes(settings.ROOT_ROUTER)
        except RouterImportError as err:  # with --skip-checks: what microframe.E010 says
            raise CommandError(f"{err}\n\tHINT: {err.hint}") from err
        overrides: dict[str, Any] = {"transport": self.transport} if self.transport else {}
        config = ServerConfig.from_settings(host=host, port=port, reuse_port=in_pool, **overrides)
        process = self.serving_process("worker" if in_pool else "server", host, port, metrics_port)
        server = Server(routes, middleware=settings.MIDDLEWARE, config=config, process=process)
        loop_factory = new_event_loop_factory(dict_setting("GRPC")["EVENT_LOOP"])

        def started() -> None:
            where = f" ({', '.join(process.endpoints)})" if process.endpoints else ""
            worker = f" [worker {os.environ[WORKER_ID_ENV]}]" if in_pool else ""
            self.stdout.write(
                f"Serving gRPC on {server.address}{where}{worker}, pid {os.getpid()}. "
                "Quit with CONTROL-C."
            )
            self.stdout.flush()

        async def serve() -> None:
            await server.serve_until_signal(on_started=started)

        try:
            self.start_serving(process)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(serve())
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise CommandError(self.in_use(config.host, port, metrics=False)) from err
            raise CommandError(str(err)) from err
        finally:
            serving_stopped.send_robust(self.__class__, process=process)

    def serving_process(
        self, role: Role, host: str, port: int, metrics_port: int
    ) -> ServingProcess:
        return ServingProcess(role, host, port, metrics_port=metrics_port)

    def start_serving(self, process: ServingProcess) -> None:
        """Send ``serving_starting``: the batteries start what the process serves besides gRPC
        (/metrics); a port a battery cannot bind is a CommandError naming its setting."""
        try:
            serving_starting.send(self.__class__, process=process)
        except AddressInUse as err:
            serving_stopped.send_robust(self.__class__, process=process)
            raise CommandError(
                self.in_use(err.host, err.port, metrics=err.purpose == "metrics")
            ) from err
        except OSError as err:
            serving_stopped.send_robust(self.__class__, process=process)
            raise CommandError(str(err)) from err

    def in_use(self, host: str, port: int, *, metrics: bool) -> str:
        """The message for ``host:port`` already in use: the setting or the option it came
        from, and how to serve elsewhere."""
        from microframe.core.checks.core_checks import settings_location
        from microframe.discovery.instance import format_address

        where = settings_location()
        if metrics:
            given = getattr(self, "metrics_port_given", False)
            named = "--metrics-port" if given else 'METRICS["PORT"]'
            fix = f'--metrics-port PORT (or set METRICS["PORT"] in {where})'
        else:
            given = getattr(self, "port_given", False)
            named = "runserver's address argument" if given else 'GRPC["PORT"]'
            fix = f'runserver HOST:PORT or PORT (or set GRPC["PORT"] in {where})'
        return (
            f"{format_address(host, port)} is already in use ({named}): stop what is using it, "
            f"or serve on another port with {fix}."
        )

    def refuse_ports_in_use(self, host: str, port: int, metrics_port: int) -> None:
        """Raise CommandError (:meth:`in_use`) when the gRPC port, or the metrics port when
        metrics are served, is taken (port 0 is never taken: a free one is chosen)."""
        from microframe.conf import settings
        from microframe.core.server import address_in_use

        taken = []
        if port and address_in_use(host, port):
            taken.append(self.in_use(host, port, metrics=False))
        metrics_host = settings.METRICS["HOST"]
        metrics = settings.METRICS["ENABLED"] and metrics_port
        if metrics and address_in_use(metrics_host, metrics_port):
            taken.append(self.in_use(metrics_host, metrics_port, metrics=True))
        if taken:
            raise CommandError("\n".join(taken))

    # -- N workers -----------------------------------------------------------------------------

    def run_supervisor(self, host: str, port: int, workers: int, metrics_port: int) -> None:
        reserved = None
        if port == 0:
            # Every worker must bind the same port: pick it once and hold it (bound, not
            # listening) so no other program takes it.
            reserved = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserved.bind((host, 0))
            port = reserved.getsockname()[1]
        process = self.serving_process("supervisor", host, port, metrics_port)
        try:
            self.start_serving(process)  # before the workers' environment is copied
            argv = list(sys.orig_argv)
            argv[0] = sys.executable
            env = dict(os.environ)
            # The address every worker serves on, whatever the command line said (port 0...).
            env[WORKER_ADDR_ENV] = process.address
            supervisor = Supervisor(
                _worker_command(argv),
                workers,
                grace=stop_sequence_seconds(),
                env=env,
                process=process,
            )
            where = f" ({', '.join(process.endpoints)})" if process.endpoints else ""
            self.stdout.write(
                f"Serving gRPC on {process.address} with {workers} workers{where}, "
                f"supervisor pid {os.getpid()}."
            )
            self.stdout.flush()
            asyncio.run(supervisor.run())
        finally:
            serving_stopped.send_robust(self.__class__, process=process)
            if reserved is not None:
                reserved.close()

    # -- autoreload ----------------------------------------------------------------------------

    def run_with_reloader(self) -> None:
        import shlex

        import watchfiles

        from microframe.conf import settings

        root = Path(settings.SERVICE_ROOT)
        argv = list(sys.orig_argv)
        argv[0] = sys.executable
        os.environ[RUN_MAIN_ENV] = "true"
        self.stdout.write(f"Watching {root} for changes (DEBUG is on; --noreload to stop this).")
        self.stdout.flush()
        watchfiles.run_process(
            root,
            target=shlex.join(argv),
            target_type="command",
            watch_filter=watchfiles.PythonFilter(extra_extensions=(".yaml", ".yml", ".proto")),
            callback=lambda changes: self.stdout.write(
                f"{len(changes)} file(s) changed ({sorted(p for _, p in changes)[0]}...), "
                "reloading."
            ),
            # The server drains on SIGINT like on SIGTERM: give it the whole stop sequence.
            sigint_timeout=int(stop_sequence_seconds() + 5),
        )
