"""``diffsettings``: show the settings in force that differ from the defaults."""

from __future__ import annotations

import pprint
from typing import Any

from microframe.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Show the settings in force (module plus YAML overlays of MICROFRAME_ENV) that differ "
        "from microframe's defaults; with --all, every setting."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="Show every setting, marking the defaults.")

    def handle(self, *args: Any, **options: Any) -> str:
        from microframe.conf import global_settings, settings

        lines = []
        user = {k: getattr(settings, k) for k in dir(settings) if k.isupper()}
        for key in sorted(user):
            value = user[key]
            default = getattr(global_settings, key, object())
            if value != default:
                lines.append(f"{key} = {pprint.pformat(value, width=100, sort_dicts=True)}")
            elif options["all"]:
                lines.append(f"### {key} = {pprint.pformat(value, width=100, sort_dicts=True)}")
        files = getattr(settings, "SETTINGS_FILES", None)
        if files:
            lines.append("# read from: " + ", ".join(files))
        return "\n".join(lines)
