"""Base classes of management commands, Django style."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from microframe.core.exceptions import ImproperlyConfigured


class CommandError(Exception):
    """A command failed; the message is printed without a traceback and the exit code is 1."""

    def __init__(self, *args: Any, returncode: int = 1) -> None:
        self.returncode = returncode
        super().__init__(*args)


class SystemCheckError(CommandError):
    """The system checks found problems serious enough to stop the command."""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that raises CommandError instead of exiting when called from code."""

    def __init__(self, *, called_from_command_line: bool = False, **kwargs: Any) -> None:
        self.called_from_command_line = called_from_command_line
        super().__init__(**kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        if self.called_from_command_line:
            super().error(message)
        raise CommandError(f"Error: {message}")


class OutputWrapper:
    """A stream wrapper that ends every write with a newline unless told otherwise."""

    def __init__(self, out: TextIO, ending: str = "\n") -> None:
        self._out = out
        self.ending = ending

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)

    def isatty(self) -> bool:
        return hasattr(self._out, "isatty") and self._out.isatty()

    def write(self, msg: str = "", ending: str | None = None) -> None:
        ending = self.ending if ending is None else ending
        if ending and not msg.endswith(ending):
            msg += ending
        self._out.write(msg)

    def flush(self) -> None:
        if hasattr(self._out, "flush"):
            self._out.flush()


def handle_default_options(options: argparse.Namespace) -> None:
    """Apply ``--settings`` and ``--pythonpath`` before settings are read."""
    if getattr(options, "settings", None):
        os.environ["MICROFRAME_SETTINGS_MODULE"] = options.settings
    if getattr(options, "pythonpath", None):
        sys.path.insert(0, options.pythonpath)


class BaseCommand:
    """A management command: set ``help``, override ``add_arguments`` and ``handle``.

    ``handle`` raises :class:`CommandError` on failure and writes through ``self.stdout`` and
    ``self.stderr``. ``requires_system_checks`` lists the check tags run before ``handle``
    (``"__all__"`` for all, ``[]`` for none).
    """

    help = ""
    requires_system_checks: list[str] | str = "__all__"
    base_stealth_options = ("stdout", "stderr")
    stealth_options: tuple[str, ...] = ()

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.stdout = OutputWrapper(stdout or sys.stdout)
        self.stderr = OutputWrapper(stderr or sys.stderr)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = CommandParser(
            prog=f"{os.path.basename(prog_name)} {subcommand}",
            description=self.help or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        parser.add_argument(
            "--settings",
            help="Python path of the settings module, e.g. orders.settings "
            "(default: the MICROFRAME_SETTINGS_MODULE environment variable).",
        )
        parser.add_argument(
            "--pythonpath", help="A directory to add to the Python path, e.g. /home/me/services."
        )
        parser.add_argument(
            "--traceback", action="store_true", help="Raise on CommandError exceptions."
        )
        if self.requires_system_checks:
            parser.add_argument(
                "--skip-checks", action="store_true", help="Skip system checks."
            )
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        """Add the command's own arguments to ``parser``."""

    def print_help(self, prog_name: str, subcommand: str) -> None:
        self.create_parser(prog_name, subcommand).print_help()

    def run_from_argv(self, argv: list[str]) -> None:
        """Parse ``argv`` and run the command; print CommandError without a traceback."""
        parser = self.create_parser(argv[0], argv[1], called_from_command_line=True)
        options = parser.parse_args(argv[2:])
        cmd_options = vars(options)
        args = cmd_options.pop("args", ())
        handle_default_options(options)
        try:
            self.execute(*args, **cmd_options)
        except (CommandError, ImproperlyConfigured) as err:
            if options.traceback:
                raise
            if isinstance(err, SystemCheckError):
                self.stderr.write(str(err))
            else:
                self.stderr.write(f"{type(err).__name__}: {err}")
            sys.exit(getattr(err, "returncode", 1))

    def execute(self, *args: Any, **options: Any) -> Any:
        """Run the checks the command requires, then ``handle``; write what it returns."""
        if options.get("stdout"):
            self.stdout = OutputWrapper(options["stdout"])
        if options.get("stderr"):
            self.stderr = OutputWrapper(options["stderr"])
        if self.requires_system_checks and not options.get("skip_checks"):
            required = self.requires_system_checks
            self.check(tags=None if isinstance(required, str) else list(required))
        output = self.handle(*args, **options)
        if output:
            self.stdout.write(output)
        return output

    def check(
        self,
        tags: list[str] | None = None,
        display_num_errors: bool = False,
        include_deployment_checks: bool = False,
        fail_level: int | None = None,
    ) -> None:
        """Run the system checks; raise SystemCheckError if any is at ``fail_level`` or above."""
        from microframe.core.checks import ERROR
        from microframe.management.checks import run_and_report

        run_and_report(
            self,
            tags=tags,
            display_num_errors=display_num_errors,
            include_deployment_checks=include_deployment_checks,
            fail_level=ERROR if fail_level is None else fail_level,
        )

    def handle(self, *args: Any, **options: Any) -> str | None:
        """Do the command's work."""
        raise NotImplementedError("subclasses of BaseCommand must provide a handle() method")
