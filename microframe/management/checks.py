"""The system checks as a command runs them: the report written to the command's streams, and
:class:`~microframe.management.base.SystemCheckError` when something is serious enough."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from microframe.core.checks import ERROR, format_report, run_checks
from microframe.management.base import SystemCheckError


def run_and_report(
    command: Any,
    *,
    tags: Iterable[str] | None = None,
    display_num_errors: bool = False,
    include_deployment_checks: bool = False,
    fail_level: int = ERROR,
) -> None:
    """Run the checks and write what they found to ``command.stdout`` / ``command.stderr``
    (:func:`microframe.core.checks.format_report`). Raise :class:`SystemCheckError` when a
    message not silenced is at ``fail_level`` or above."""
    all_issues = run_checks(tags=tags, include_deployment_checks=include_deployment_checks)
    visible = [issue for issue in all_issues if not issue.is_silenced()]
    report = format_report(all_issues, display_num_errors=display_num_errors)
    if any(issue.is_serious(fail_level) for issue in visible):
        raise SystemCheckError(f"SystemCheckError: {report}")
    if report:
        stream = command.stderr if visible else command.stdout
        stream.write(report if report.endswith("\n") else report + "\n")
