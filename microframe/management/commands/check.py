"""``check``: run the system checks and report what they find."""

from __future__ import annotations

from typing import Any

from microframe.core import checks
from microframe.core.checks import registry
from microframe.management.base import BaseCommand, CommandError, CommandParser

FAIL_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Command(BaseCommand):
    help = (
        "Check the service for problems: settings, middleware, router, ports, TLS. With "
        "--deploy, also the checks that matter in production."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tag", "-t", action="append", dest="tags",
            help="Run only the checks with this tag (repeatable).",
        )
        parser.add_argument("--list-tags", action="store_true", help="List the available tags.")
        parser.add_argument("--deploy", action="store_true", help="Run the deployment checks too.")
        parser.add_argument(
            "--fail-level", default="ERROR", choices=FAIL_LEVELS,
            help="Level of message that makes the command exit with a non-zero status "
            "(default: ERROR).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        include_deployment_checks = options["deploy"]
        if options["list_tags"]:
            self.stdout.write("\n".join(sorted(registry.tags_available(include_deployment_checks))))
            return
        tags = options["tags"]
        if tags:
            for tag in tags:
                if not checks.tag_exists(tag, include_deployment_checks):
                    raise CommandError(f'There is no system check with the "{tag}" tag.')
        self.check(
            tags=tags,
            display_num_errors=True,
            include_deployment_checks=include_deployment_checks,
            fail_level=getattr(checks, options["fail_level"]),
        )
        if not tags or "server" in tags:
            self.stdout.write(self.transport_line())

    def transport_line(self) -> str:
        """The transport ``runserver`` would serve on, and why (``GRPC["TRANSPORT"]``)."""
        from microframe.core.exceptions import ImproperlyConfigured
        from microframe.core.server import ServerConfig
        from microframe.core.transport import choose_transport

        try:
            transport, reason = choose_transport(ServerConfig.from_settings())
        except ImproperlyConfigured as err:  # reported by the checks above
            return f"Transport: none ({err})"
        return f"Transport: {transport.name} ({reason})"
