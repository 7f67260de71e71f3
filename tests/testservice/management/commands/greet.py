"""A command of the service package, found by convention."""

from microframe.conf import settings
from microframe.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Print a greeting (a service-local command)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--fail", action="store_true")

    def handle(self, *args, **options):
        if options["fail"]:
            raise CommandError(f"cannot greet {options['name']}")
        return f"{settings.GREETING}, {options['name']} from {settings.SERVICE_NAME}"
