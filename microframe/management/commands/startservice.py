"""``startservice NAME [DIR]``: create a service from microframe's project template.

The template (``microframe/project_template``, a cookiecutter template, also usable with
``cookiecutter`` directly) is rendered with no network access and no prompt; its post-generation
hook runs ``genproto``, so the new service answers its ``SayHello`` RPC at once.
"""

from __future__ import annotations

import importlib.util
import keyword
import zlib
from pathlib import Path
from typing import Any

import microframe
from microframe.management.base import BaseCommand, CommandError, CommandParser

TEMPLATE = Path(__file__).resolve().parent.parent.parent / "project_template"


def validate_name(name: str, target: Path | None = None) -> None:
    """Raise CommandError unless ``name`` can be the service's Python package (``target``, the
    service's directory, may already exist as an empty directory on the path)."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise CommandError(
            f"{name!r} is not a valid service name: it names the service's Python package, so it "
            "must be a Python identifier (letters, digits and underscores, not starting with a "
            "digit, not a keyword), e.g. orders or order_items."
        )
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.origin is None and target is not None:
        locations = {Path(p).resolve() for p in found.submodule_search_locations or ()}
        if locations <= {target.resolve()}:
            found = None  # the empty target directory itself, seen as a namespace package
    if found is not None:
        where = f" ({found.origin})" if found.origin else ""
        raise CommandError(
            f"{name!r} conflicts with the name of an existing Python module{where}: the service "
            "could not be imported as itself. Choose another name."
        )


#: The ports a new service is given: a pair (gRPC, /metrics = gRPC + 1) among
#: ``PORT_PAIRS`` pairs from ``FIRST_PORT``, below Linux's ephemeral range (32768-60999), where
#: outgoing connections could already hold them, and below Kubernetes' node ports (30000-).
FIRST_PORT = 20000
PORT_PAIRS = 5000


def _free(port: int) -> bool:
    from microframe.core.server import address_in_use

    return not address_in_use("127.0.0.1", port)


def service_ports(name: str, is_free: Any = _free) -> tuple[int, int]:
    """The gRPC and /metrics ports of a new service called ``name``: derived from its name (so
    two services never share the defaults 50051/9464, and one name always gets the same pair),
    moving to the next pair while either port is taken on this machine at render time."""
    first = zlib.crc32(name.encode()) % PORT_PAIRS
    for step in range(PORT_PAIRS):
        port = FIRST_PORT + 2 * ((first + step) % PORT_PAIRS)
        if is_free(port) and is_free(port + 1):
            return port, port + 1
    raise CommandError(
        "No free pair of ports: give the service its own with --port and --metrics-port."
    )


def target_directory(name: str, directory: str | None) -> Path:
    """``DIR/NAME`` (``./NAME`` without ``DIR``), or ``DIR`` itself when it is named ``NAME``."""
    base = Path(directory) if directory else Path.cwd()
    return base if base.name == name else base / name


class Command(BaseCommand):
    help = (
        "Create a new service NAME from the project template: controller/, idl/, generate/, "
        "app/router.py, conf/, tests/, manage.py, settings.py, Dockerfile... in DIR/NAME "
        "(default ./NAME), ready to run."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The service's name and Python package, e.g. orders.")
        parser.add_argument(
            "directory", nargs="?",
            help="Where to create it: DIR/NAME (or DIR itself when it is named NAME and empty). "
                 "Default: ./NAME.",
        )
        parser.add_argument(
            "--service-name", help="The registry name (SERVICE_NAME; default: NAME)."
        )
        parser.add_argument(
            "--proto-package", help="The package of the .proto (default: NAME)."
        )
        parser.add_argument(
            "--service-class", help="The proto service (default: NAME in CamelCase)."
        )
        parser.add_argument(
            "--port", type=int,
            help="The gRPC port (default: derived from NAME, between 20000 and 29998, free here).",
        )
        parser.add_argument(
            "--metrics-port", type=int, help="The /metrics port (default: the gRPC port + 1)."
        )
        parser.add_argument("--author", help="Who the README names as the service's author.")
        parser.add_argument(
            "--template", default=str(TEMPLATE),
            help="A cookiecutter template directory to use instead of microframe's.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            from cookiecutter.exceptions import CookiecutterException
            from cookiecutter.main import cookiecutter
        except ImportError as err:
            raise CommandError(
                f"startservice needs cookiecutter (pip install cookiecutter): {err}"
            ) from err

        name: str = options["name"]
        target = target_directory(name, options["directory"])
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise CommandError(
                f"{target} already exists: choose another name or directory, or remove it."
            )
        validate_name(name, target)
        if options["port"] is None:
            options["port"], derived_metrics = service_ports(options["service_name"] or name)
            if options["metrics_port"] is None:
                options["metrics_port"] = derived_metrics
        elif options["metrics_port"] is None:
            options["metrics_port"] = options["port"] + 1 if options["port"] else 0
        for flag in ("port", "metrics_port"):
            if not 0 <= options[flag] <= 65535:
                raise CommandError(
                    f"--{flag.replace('_', '-')} {options[flag]} is not a port number (0-65535)."
                )
        template = Path(options["template"])
        if not (template / "cookiecutter.json").is_file():
            raise CommandError(f"{template} is not a cookiecutter template (no cookiecutter.json).")

        context: dict[str, str] = {
            "service_name": options["service_name"] or name,
            "python_package": name,
            "port": str(options["port"]),
            "metrics_port": str(options["metrics_port"]),
            # requirements.txt pins the framework to the version that rendered the service.
            "microframe_version": microframe.__version__,
        }
        for key in ("proto_package", "service_class", "author"):
            if options[key]:
                context[key] = options[key]
        try:
            cookiecutter(
                str(template), no_input=True, extra_context=context, output_dir=str(target.parent),
                overwrite_if_exists=target.is_dir(), accept_hooks=True,
            )
        except CookiecutterException as err:
            raise CommandError(f"The service could not be created: {err}") from err
        self.stdout.write(
            f"Created the service {context['service_name']!r} in {target} (gRPC on port "
            f"{options['port']}, metrics on {options['metrics_port']}).\n"
            f"  cd {target}\n"
            "  python manage.py runserver\n"
            f"  python manage.py call {context.get('proto_package', name)}."
            f"{context.get('service_class') or _camel(name)}/SayHello '{{\"name\": \"Ada\"}}'\n"
        )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
