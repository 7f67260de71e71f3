"""Checks of ROOT_ROUTER and its routes.

- ``microframe.E004``: ROOT_ROUTER is not set, names a module that does not exist, or has no
  ``routes``.
- ``microframe.E005``: a route is broken: not a Route, a controller that is not callable, or
  a method routed twice.
- ``microframe.E010``: ROOT_ROUTER's module exists, but importing it (or a module it imports)
  raised: the error and the file and line where it happened.
- ``microframe.W004``: the router routes no method.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from microframe.conf import settings
from microframe.core.checks.core_checks import short_repr, wrong_setting
from microframe.core.checks.messages import CheckMessage, Error, Warning
from microframe.core.checks.registry import Tags, register
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.router import Route, RouterImportError, get_router_module, load_routes

ROUTER_HINT = (
    "Set ROOT_ROUTER to the dotted path of the module holding `routes` (genproto writes it), "
    'e.g. ROOT_ROUTER = "orders.app.router", and make sure its package is on sys.path.'
)
ROUTE_HINT = (
    "Build every route with microframe.core.router.rpc(service, method, controller), bind it "
    "to a function (greeter.say_hello, not greeter.say_hello()), and route each method once."
)


def router_problem(problem: str) -> Error:
    """Return microframe.E004: the router module named by ROOT_ROUTER is unusable."""
    return Error(problem, hint=ROUTER_HINT, id="microframe.E004")


def route_problem(problem: str) -> Error:
    """Return microframe.E005: one route of the router is broken."""
    return Error(problem, hint=ROUTE_HINT, id="microframe.E005")


def no_routes(path: str) -> Warning:
    """Return microframe.W004: the router at ``path`` routes nothing."""
    return Warning(
        f"Router {path!r} routes no method: every call will be answered UNIMPLEMENTED.",
        hint="Add routes with microframe.core.router.rpc(), or run genproto to write them.",
        id="microframe.W004",
    )


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item


def loadable_routes() -> list[Route] | None:
    """Return the routes of ROOT_ROUTER, or None when they do not load."""
    path = getattr(settings, "ROOT_ROUTER", None)
    if not path or not isinstance(path, str):
        return None
    try:
        return load_routes(path)
    except Exception:
        return None


@register(Tags.router)
def check_router(**kwargs: Any) -> list[CheckMessage]:
    """Check that ROOT_ROUTER imports and its routes are sound (microframe.E004, E005, E010,
    W004)."""
    path = getattr(settings, "ROOT_ROUTER", None)
    if path is not None and not isinstance(path, str):
        return [wrong_setting("ROOT_ROUTER", "a dotted module path (str)", path, ROUTER_HINT)]
    if not path:
        return [router_problem("ROOT_ROUTER is not set: name the module holding `routes`.")]
    try:
        module = get_router_module(path)
    except RouterImportError as err:
        return [Error(str(err), hint=err.hint, id="microframe.E010")]
    except ImproperlyConfigured as err:
        return [router_problem(str(err))]
    except Exception as err:
        return [router_problem(f"ROOT_ROUTER {path!r} cannot be imported: {type(err).__name__}: {err}")]
    raw = getattr(module, "routes", None)
    if raw is None:
        return [router_problem(f"Router module {path!r} has no `routes` list.")]
    if not isinstance(raw, (list, tuple)):
        return [router_problem(f"`routes` of router module {path!r} must be a list, not {short_repr(raw)}.")]
    errors: list[CheckMessage] = []
    seen: set[str] = set()
    count = 0
    for entry in _flatten(raw):
        count += 1
        if not isinstance(entry, Route):
            errors.append(route_problem(f"Router {path!r}: {short_repr(entry)} is not a Route."))
            continue
        if not callable(entry.controller):
            errors.append(
                route_problem(
                    f"Router {path!r}: the controller of {entry.full_method} is not callable: "
                    f"{short_repr(entry.controller)}."
                )
            )
        if entry.full_method in seen:
            errors.append(route_problem(f"Router {path!r}: {entry.full_method} is routed twice."))
        seen.add(entry.full_method)
    if count == 0:
        errors.append(no_routes(path))
    return errors
