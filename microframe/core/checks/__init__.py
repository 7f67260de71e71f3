"""The system-check framework, Django style.

A check is a function returning a list of :class:`CheckMessage`, registered with tags::

    from microframe.conf import settings
    from microframe.core.checks import Error, Tags, register

    @register(Tags.server)
    def check_workers(**kwargs):
        if settings.WORKERS < 1:
            return [Error("WORKERS must be at least 1.", hint="Set WORKERS = 1.", id="myapp.E001")]
        return []

``python manage.py check`` runs them (``--deploy`` adds the deployment checks), and so does
every command whose ``requires_system_checks`` is not empty, before it does its work. Messages
whose id is in ``SILENCED_SYSTEM_CHECKS`` are not reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import microframe.client.checks  # noqa: F401 - the client library's checks
import microframe.core.checks.core_checks  # noqa: F401 - registers the built-in checks
import microframe.core.checks.middleware_checks  # noqa: F401
import microframe.core.checks.proto_checks  # noqa: F401
import microframe.core.checks.router_checks  # noqa: F401
import microframe.core.checks.security_checks  # noqa: F401
from microframe.core.checks.messages import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    WARNING,
    CheckMessage,
    Critical,
    Debug,
    Error,
    Info,
    Warning,
)
from microframe.core.checks.registry import (
    CheckRegistry,
    Tags,
    register,
    registry,
    run_checks,
    tag_exists,
)

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "INFO",
    "WARNING",
    "CheckMessage",
    "CheckRegistry",
    "Critical",
    "Debug",
    "Error",
    "Info",
    "Tags",
    "Warning",
    "register",
    "registry",
    "run_and_report",
    "run_checks",
    "tag_exists",
]

_GROUPS = (
    ("CRITICALS", CRITICAL, None),
    ("ERRORS", ERROR, CRITICAL),
    ("WARNINGS", WARNING, ERROR),
    ("INFOS", INFO, WARNING),
    ("DEBUGS", None, INFO),
)


def _write(stream: Any, text: str) -> None:
    stream.write(text if text.endswith("\n") else text + "\n")


def run_and_report(
    command: Any,
    *,
    tags: Iterable[str] | None = None,
    display_num_errors: bool = False,
    include_deployment_checks: bool = False,
    fail_level: int = ERROR,
) -> None:
    """Run the checks and write what they found to ``command.stdout`` / ``command.stderr``.

    Messages are grouped by level (``ERRORS:``, ``WARNINGS:``...), silenced ones left out.
    With ``display_num_errors``, end with "System check identified N issues (M silenced)."
    Raise :class:`~microframe.management.base.SystemCheckError` when a message not silenced
    is at ``fail_level`` or above.
    """
    from microframe.management.base import SystemCheckError

    all_issues = run_checks(tags=tags, include_deployment_checks=include_deployment_checks)
    visible = [issue for issue in all_issues if not issue.is_silenced()]
    body = ""
    for group, low, high in _GROUPS:
        issues = [
            issue
            for issue in visible
            if (low is None or issue.level >= low) and (high is None or issue.level < high)
        ]
        if issues:
            body += f"\n{group}:\n" + "\n".join(sorted(str(issue) for issue in issues)) + "\n"
    header = "System check identified some issues:\n" if visible else ""
    footer = ""
    if display_num_errors:
        count = len(visible)
        counted = "no issues" if count == 0 else "1 issue" if count == 1 else f"{count} issues"
        footer = ("\n" if visible else "") + (
            f"System check identified {counted} ({len(all_issues) - count} silenced)."
        )
    if any(issue.is_serious(fail_level) for issue in visible):
        raise SystemCheckError(f"SystemCheckError: {header}{body}{footer}")
    message = header + body + footer
    if message:
        _write(command.stderr if visible else command.stdout, message)
