"""The registry of check functions and the tags they run under."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from microframe.core.checks.messages import CheckMessage


class Tags:
    """Built-in tags, to select checks with ``check --tag``."""

    settings = "settings"
    middleware = "middleware"
    router = "router"
    server = "server"
    metrics = "metrics"
    security = "security"
    registry = "registry"
    client = "client"
    tracing = "tracing"
    limiter = "limiter"
    logging = "logging"
    gateway = "gateway"
    auth = "auth"
    validation = "validation"


F = TypeVar("F", bound=Callable[..., Iterable[CheckMessage]])


def _accepts_kwargs(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in params)


class CheckRegistry:
    """Check functions, each with its tags; deployment checks apart.

    Checks run in the order they were registered. ``prepare``, if given, is called before the
    checks are listed or run: the global registry sets the batteries up there, so that they
    have registered theirs.
    """

    def __init__(self, prepare: Callable[[], None] | None = None) -> None:
        self.registered_checks: dict[Callable[..., Any], None] = {}
        self.deployment_checks: dict[Callable[..., Any], None] = {}
        self.prepare = prepare

    @overload
    def register(self, check: F, *tags: str, deploy: bool = False) -> F: ...

    @overload
    def register(
        self, check: str | None = None, *tags: str, deploy: bool = False
    ) -> Callable[[F], F]: ...

    def register(
        self, check: F | str | None = None, *tags: str, deploy: bool = False
    ) -> F | Callable[[F], F]:
        """Register a check function, directly or as a decorator.

        ``@register``, ``@register("tag", ...)``, ``@register(Tags.server, deploy=True)`` and
        ``register(func, "tag")`` all work. A check must accept ``**kwargs`` (future
        arguments) and return a list of :class:`CheckMessage`. ``deploy=True`` runs it only
        with ``check --deploy``.
        """

        def inner(func: F) -> F:
            if not _accepts_kwargs(func):
                raise TypeError("Check functions must accept keyword arguments (**kwargs).")
            func.tags = tags  # type: ignore[attr-defined]
            checks = self.deployment_checks if deploy else self.registered_checks
            checks[func] = None
            return func

        if callable(check):
            return inner(check)
        if check:
            tags = (check, *tags)
        return inner

    def run_checks(
        self,
        tags: Iterable[str] | None = None,
        include_deployment_checks: bool = False,
        **kwargs: Any,
    ) -> list[CheckMessage]:
        """Run the checks (those with one of ``tags`` if given) and return their messages.

        ``kwargs`` are passed on to every check function.
        """
        errors: list[CheckMessage] = []
        checks = self.get_checks(include_deployment_checks)
        if tags is not None:
            wanted = set(tags)
            checks = [c for c in checks if not wanted.isdisjoint(getattr(c, "tags", ()))]
        for check in checks:
            new_errors = check(**kwargs)
            if isinstance(new_errors, (str, bytes)) or not isinstance(new_errors, Iterable):
                raise TypeError(
                    f"The function {check!r} did not return a list. All functions registered "
                    "with the checks registry must return a list."
                )
            errors.extend(new_errors)
        return errors

    def tag_exists(self, tag: str, include_deployment_checks: bool = False) -> bool:
        """Tell whether a check is registered with ``tag``."""
        return tag in self.tags_available(include_deployment_checks)

    def tags_available(self, deployment_checks: bool = False) -> set[str]:
        """Return the tags of the registered checks (and of the deployment ones if asked)."""
        return {
            tag
            for check in self.get_checks(deployment_checks)
            for tag in getattr(check, "tags", ())
        }

    def get_checks(self, include_deployment_checks: bool = False) -> list[Callable[..., Any]]:
        """Return the registered checks, then the deployment checks if asked."""
        if self.prepare is not None:
            self.prepare()
        checks = list(self.registered_checks)
        if include_deployment_checks:
            checks.extend(c for c in self.deployment_checks if c not in self.registered_checks)
        return checks


def _setup_batteries() -> None:
    """Have the batteries of ``BATTERIES`` register their checks (once)."""
    from microframe.batteries import setup_batteries

    setup_batteries()


registry = CheckRegistry(prepare=_setup_batteries)
register = registry.register
run_checks = registry.run_checks
tag_exists = registry.tag_exists
