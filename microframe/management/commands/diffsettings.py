"""``diffsettings``: show the settings in force that differ from the defaults."""

from __future__ import annotations

import pprint
from typing import Any

from microframe.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Show the settings in force (module plus YAML overlays of MICROFRAME_ENV) that differ "
        "from microframe's defaults; with --all, every setting. Secrets (passwords, tokens, "
        "keys, the password of a URL) are shown as ********."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all", action="store_true", help="Show every setting, marking the defaults."
        )

    def handle(self, *args: Any, **options: Any) -> str:
        from microframe.conf import global_settings, settings
        from microframe.conf.redaction import redact

        lines = []
        user = {k: getattr(settings, k) for k in dir(settings) if k.isupper()}
        for key in sorted(user):
            value = user[key]
            default = getattr(global_settings, key, object())
            shown = pprint.pformat(redact(value, key), width=100, sort_dicts=True)
            if value != default:
                lines.append(f"{key} = {shown}")
            elif options["all"]:
                lines.append(f"### {key} = {shown}")
        files = getattr(settings, "SETTINGS_FILES", None)
        if files:
            lines.append("# read from: " + ", ".join(files))
        return "\n".join(lines)
