"""Run management commands: ``manage.py``, ``microframe-admin`` and ``call_command``."""

from __future__ import annotations

import argparse
import functools
import os
import pkgutil
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from microframe.core.exceptions import ImproperlyConfigured
from microframe.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    handle_default_options,
)

__all__ = [
    "BaseCommand", "CommandError", "call_command", "execute_from_command_line", "get_commands",
]


def find_commands(management_dir: str) -> list[str]:
    """Return the command modules of ``management_dir/commands`` (no leading underscore)."""
    command_dir = os.path.join(management_dir, "commands")
    return [
        name
        for _, name, is_pkg in pkgutil.iter_modules([command_dir])
        if not is_pkg and not name.startswith("_")
    ]


def load_command_class(app_name: str, name: str) -> BaseCommand:
    """Return an instance of ``Command`` from ``<app_name>.management.commands.<name>``."""
    module = import_module(f"{app_name}.management.commands.{name}")
    return module.Command()


def _service_package() -> str | None:
    """Return the package of the service whose settings are in use (e.g. ``orders``)."""
    from microframe.conf import settings

    try:
        module = settings.SETTINGS_MODULE
    except ImproperlyConfigured:
        return None
    if not module:
        return None
    return module.rpartition(".")[0] or None


def _package_commands(package: str) -> list[str]:
    """Return the commands of ``package.management.commands`` (none if it has no management)."""
    try:
        mod = import_module(f"{package}.management")
    except ImportError:
        return []
    return [name for path in getattr(mod, "__path__", ()) for name in find_commands(path)]


def _battery_packages() -> list[str]:
    """Return the packages of the batteries in ``BATTERIES`` (none if one does not load).

    A battery that does not load is reported by the command run (its checks, ``fetch_command``).
    """
    from microframe.batteries import get_batteries

    try:
        return [battery.name for battery in get_batteries()]
    except ImproperlyConfigured:
        return []


@functools.cache
def get_commands() -> dict[str, str]:
    """Map every command name to the package that provides it.

    The framework's own commands first, then those of each battery of ``BATTERIES`` (in its
    ``management/commands/``), then the service package's, which may override them (as
    Django apps do).
    """
    commands = {name: "microframe" for name in find_commands(os.path.dirname(__file__))}
    for battery in _battery_packages():
        commands.update({name: battery for name in _package_commands(battery)})
    package = _service_package()
    if package:
        commands.update({name: package for name in _package_commands(package)})
    return commands


def call_command(command_name: str | BaseCommand, *args: Any, **options: Any) -> Any:
    """Call a command from code: positional ``args`` like the command line, ``options`` by name.

    Returns what ``handle`` returned. Options of the parser not given take their defaults.
    """
    if isinstance(command_name, BaseCommand):
        command = command_name
        command_name = command.__class__.__module__.split(".")[-1]
    else:
        try:
            app_name = get_commands()[command_name]
        except KeyError:
            raise CommandError(f"Unknown command: {command_name!r}") from None
        command = load_command_class(app_name, command_name)
    parser = command.create_parser("", command_name)
    opt_mapping = {
        min(s_opt.option_strings).lstrip("-").replace("-", "_"): s_opt.dest
        for s_opt in parser._actions
        if s_opt.option_strings
    }
    arg_options = {opt_mapping.get(key, key): value for key, value in options.items()}
    parse_args = [str(a) for a in args]
    defaults = parser.parse_args(args=parse_args)
    defaults_dict = dict(vars(defaults), **arg_options)
    stealth = set(command.base_stealth_options) | set(command.stealth_options)
    valid = {a.dest for a in parser._actions} | stealth
    unknown = set(arg_options) - valid
    if unknown:
        raise TypeError(
            f"Unknown option(s) for {command_name} command: {', '.join(sorted(unknown))}. "
            f"Valid options are: {', '.join(sorted(valid))}."
        )
    positional = defaults_dict.pop("args", ())
    if "skip_checks" not in options:
        defaults_dict["skip_checks"] = True
    return command.execute(*positional, **defaults_dict)


class ManagementUtility:
    """What ``manage.py`` and ``microframe-admin`` run."""

    def __init__(self, argv: Sequence[str] | None = None) -> None:
        self.argv = list(argv if argv is not None else sys.argv)
        self.prog_name = os.path.basename(self.argv[0])
        if self.prog_name == "__main__.py":
            self.prog_name = "python -m microframe"

    def main_help_text(self) -> str:
        lines = [
            f"Type '{self.prog_name} help <subcommand>' for help on a specific subcommand.",
            "",
            "Available subcommands:",
        ]
        by_app: dict[str, list[str]] = {}
        for name, app in get_commands().items():
            by_app.setdefault(app, []).append(name)
        for app in sorted(by_app):
            lines.append("")
            lines.append(f"[{app}]")
            lines.extend(f"    {name}" for name in sorted(by_app[app]))
        try:
            from microframe.conf import settings

            settings.SERVICE_NAME  # noqa: B018 - loads the settings
        except ImproperlyConfigured as err:
            lines.append("")
            lines.append(
                "Note: only the commands of the framework and its default batteries are listed "
                f"({err})."
            )
        return "\n".join(lines)

    def fetch_command(self, subcommand: str) -> BaseCommand:
        commands = get_commands()
        try:
            app_name = commands[subcommand]
        except KeyError:
            import difflib

            from microframe.conf import ENVIRONMENT_VARIABLE, settings

            if os.environ.get(ENVIRONMENT_VARIABLE):
                try:
                    settings.SERVICE_NAME  # noqa: B018 - broken settings hide the service's commands
                    from microframe.batteries import get_batteries

                    get_batteries()  # and a battery that does not load hides its own
                except ImproperlyConfigured as err:
                    sys.stderr.write(f"ImproperlyConfigured: {err}\n")
                    sys.exit(1)

            possible = difflib.get_close_matches(subcommand, commands)
            hint = f" Did you mean {possible[0]}?" if possible else ""
            sys.stderr.write(
                f"Unknown command: {subcommand!r}.{hint}\nType '{self.prog_name} help' for usage.\n"
            )
            sys.exit(1)
        return load_command_class(app_name, subcommand)

    def execute(self) -> None:
        subcommand = self.argv[1] if len(self.argv) > 1 else "help"
        # Apply --settings and --pythonpath early: they decide which commands exist.
        parser = CommandParser(
            prog=self.prog_name,
            usage="%(prog)s subcommand [options] [args]",
            add_help=False,
            allow_abbrev=False,
        )
        parser.add_argument("--settings")
        parser.add_argument("--pythonpath")
        parser.add_argument("args", nargs="*")
        try:
            options, _ = parser.parse_known_args(self.argv[2:])
            handle_default_options(options)
        except CommandError:
            # A malformed --settings/--pythonpath: the command's own parser reports it.
            options = argparse.Namespace(settings=None, pythonpath=None, args=[])
        if subcommand == "help":
            if "--commands" in self.argv:
                sys.stdout.write("\n".join(sorted(get_commands())) + "\n")
            elif not options.args:
                sys.stdout.write(self.main_help_text() + "\n")
            else:
                self.fetch_command(options.args[0]).print_help(self.prog_name, options.args[0])
        elif subcommand == "version" or self.argv[1:] == ["--version"]:
            from microframe import __version__

            sys.stdout.write(__version__ + "\n")
        elif self.argv[1:] in (["--help"], ["-h"]):
            sys.stdout.write(self.main_help_text() + "\n")
        else:
            self.fetch_command(subcommand).run_from_argv(self.argv)


def execute_from_command_line(argv: Sequence[str] | None = None) -> None:
    """Run the command named on the command line."""
    utility = ManagementUtility(argv)
    utility.execute()
