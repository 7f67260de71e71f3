"""Checks of MIDDLEWARE and of the routes' own middleware.

- ``microframe.E001``: MIDDLEWARE is not a list of dotted paths.
- ``microframe.E002``: a middleware entry cannot be imported.
- ``microframe.E003``: a middleware entry imports but its factory fails to build a handler.

Every entry is built the way the server builds it, with
:func:`~microframe.core.middleware.build_chain`, once per route of ROOT_ROUTER (or once for a
stand-in route when the router does not load). A factory raising ``MiddlewareNotUsed`` is fine.
Since commands run the checks in the process that then serves, factories are built twice per
route there: building must be repeatable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf import empty_pb2

from microframe.conf import settings
from microframe.core.checks.core_checks import short_repr, wrong_setting
from microframe.core.checks.messages import CheckMessage, Error
from microframe.core.checks.registry import Tags, register
from microframe.core.checks.router_checks import loadable_routes
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.middleware import build_chain, resolve_middleware
from microframe.core.router import Route, RpcKind

IMPORT_HINT = (
    "Check the dotted path (package.module.Name) and that its module imports; a battery may "
    "need an optional dependency (pip install microframe-grpc[full])."
)
BUILD_HINT = (
    "A middleware factory is called with the next handler (and route=... when it accepts it) "
    "and must return an async handler; raise MiddlewareNotUsed to leave the chain."
)


async def _terminal(ctx: Any, request: Any) -> Any:
    return None


STAND_IN_ROUTE = Route(
    service="microframe.checks.StandIn",
    method="Check",
    controller=_terminal,
    request_class=empty_pb2.Empty,
    response_class=empty_pb2.Empty,
    kind=RpcKind.UNARY_UNARY,
)


def _name(entry: Any) -> str:
    return entry if isinstance(entry, str) else getattr(entry, "__qualname__", short_repr(entry))


def unimportable(entry: Any, origin: str, error: BaseException) -> Error:
    """Return microframe.E002: ``entry`` of ``origin`` cannot be imported."""
    return Error(
        f"Middleware {_name(entry)!r} of {origin} cannot be imported: {error}",
        hint=IMPORT_HINT,
        id="microframe.E002",
    )


def unbuildable(entry: Any, origin: str, route: Route | None, error: BaseException) -> Error:
    """Return microframe.E003: ``entry`` of ``origin`` fails to build (for ``route``)."""
    where = "" if route is None or route is STAND_IN_ROUTE else f" for {route.full_method}"
    if isinstance(error, ImproperlyConfigured):
        what = str(error)
    else:
        what = f"{type(error).__name__}: {error}"
    return Error(
        f"Middleware {_name(entry)!r} of {origin} fails to build{where}: {what}",
        hint=BUILD_HINT,
        id="microframe.E003",
    )


def check_entry(
    entry: Any, origin: str, routes: list[Route], name_route: bool = True
) -> list[CheckMessage]:
    """Import ``entry`` and build it for every route; return the first problem found."""
    try:
        resolve_middleware(entry)
    except ImproperlyConfigured as err:
        return [unimportable(entry, origin, err.__cause__ or err)]
    except Exception as err:  # the module raised while being imported
        return [unimportable(entry, origin, err)]
    for route in routes:
        bare = dataclasses.replace(route, middleware=())
        try:
            build_chain(bare, _terminal, [entry])
        except Exception as err:
            return [unbuildable(entry, origin, route if name_route else None, err)]
    return []


@register(Tags.middleware)
def check_middleware(**kwargs: Any) -> list[CheckMessage]:
    """Check that every middleware imports and builds (microframe.E001, E002, E003)."""
    middleware = getattr(settings, "MIDDLEWARE", [])
    expected = "a list of dotted paths (str)"
    if not isinstance(middleware, (list, tuple)):
        return [wrong_setting("MIDDLEWARE", expected, middleware)]
    errors: list[CheckMessage] = []
    bad = [entry for entry in middleware if not (isinstance(entry, str) or callable(entry))]
    if bad:
        errors.append(
            Error(
                f"MIDDLEWARE must be a list of dotted paths (str), but it holds {short_repr(bad)}.",
                hint=f"Replace {short_repr(bad)} by dotted paths such as "
                '"microframe.contrib.metrics.middleware.MetricsMiddleware".',
                id="microframe.E001",
            )
        )
    routes = loadable_routes()
    # A stand-in route only when the router is broken (the server will not start anyway):
    # factories may set up per-method state, such as metric series, while being built.
    build_for = [STAND_IN_ROUTE] if routes is None else routes
    for entry in middleware:
        if isinstance(entry, str) or callable(entry):
            errors.extend(check_entry(entry, "MIDDLEWARE", build_for))
    reported: set[str] = set()  # a broken extra shared by several routes is reported once
    for route in routes or ():
        origin = f"route {route.full_method}"
        for entry in route.middleware:
            if _name(entry) in reported:
                continue
            if isinstance(entry, str) or callable(entry):
                found = check_entry(entry, origin, [route], name_route=False)
            else:
                found = [unimportable(entry, origin, TypeError("not a dotted path or a callable"))]
            if found:
                reported.add(_name(entry))
                errors.extend(found)
    return errors
