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
    "format_report",
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


def format_report(all_issues: list[CheckMessage], *, display_num_errors: bool = False) -> str:
    """What ``check`` prints of ``all_issues``: the messages not silenced, grouped by level
    (``ERRORS:``, ``WARNINGS:``...) under "System check identified some issues:"; with
    ``display_num_errors``, ending with "System check identified N issues (M silenced)."
    Empty when there is nothing to say."""
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
    return header + body + footer
