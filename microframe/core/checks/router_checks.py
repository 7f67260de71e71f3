"""Checks of ROOT_ROUTER and its routes.

- ``microframe.E004``: ROOT_ROUTER is not set, names a module that does not exist, or has no
  ``routes``.
- ``microframe.E005``: a route is broken: not a Route, a controller that is not callable, or
  a method routed twice.
- ``microframe.E010``: ROOT_ROUTER's module exists, but importing it (or a module it imports)
  raised: the error and the file and line where it happened.
- ``microframe.E011``: a controller cannot be called as ``controller(ctx, request)``, as the
  server calls it for every kind of RPC (its signature needs other arguments).
- ``microframe.W004``: the router routes no method.
- ``microframe.E015``: a key of ``GRPC["METHOD_TIMEOUTS"]`` is no method the router serves
  (misspelt, not a full method name, or the method is not routed): the hint says which
  exist, the closest first.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from microframe.conf import dict_setting, settings
from microframe.core.checks.core_checks import short_repr, wrong_setting
from microframe.core.checks.messages import CheckMessage, Error, Warning, close_key
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


def _described(controller: Any) -> tuple[str, str | None]:
    """Return the dotted name of ``controller`` and ``file:line`` where it is defined (None
    when unknown): a function or method by its own name, a callable object by its class's."""
    target = controller.func if isinstance(controller, functools.partial) else controller
    target = inspect.unwrap(getattr(target, "__func__", target))
    instance = not inspect.isroutine(target) and not inspect.isclass(target)
    if instance:
        target = type(target)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    code = getattr(target, "__code__", None)
    if code is None and inspect.isclass(target):
        call = target.__call__ if instance else getattr(target, "__init__", None)
        code = getattr(inspect.unwrap(call), "__code__", None) if call is not None else None
    if instance:
        name = f"an instance of {name}"
    return name, None if code is None else f"{code.co_filename}:{code.co_firstlineno}"


def signature_problem(path: str, route: Route) -> Error | None:
    """Return microframe.E011 when the controller of ``route`` cannot be called as the server
    calls it, ``controller(ctx, request)`` (``(ctx, requests)``, an iterator of the request
    messages, for client and bidirectional streams)."""
    controller = route.controller
    try:
        signature = inspect.signature(controller)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to tell
        return None
    try:
        signature.bind(object(), object())
    except TypeError as err:
        reason = str(err)
    else:
        return None
    second = "requests" if route.kind.client_streaming else "request"
    name, where = _described(controller)
    at = f", defined at {where}," if where else ""
    hint = (
        f"The server calls every controller as controller(ctx, {second}), {CALL_SHAPES[second]}: "
        f"define it as `async def {route_function(route)}(ctx, {second}):` (or `def`) and give "
        "any further parameter a default."
    )
    qualname = str(getattr(inspect.unwrap(controller), "__qualname__", ""))
    if next(iter(signature.parameters), None) == "self" and "." in qualname:
        owner, method = qualname.rsplit(".", 1)
        hint += (f" It is a method routed from its class: route the method of an instance, "
                 f"{owner}().{method}, not {owner}.{method}.")
    return Error(
        f"Router {path!r}: the controller of {route.full_method}, {name}{at} cannot be called "
        f"as (ctx, {second}): its signature is {signature} ({reason}). Every call would be "
        "answered INTERNAL.",
        hint=hint,
        id="microframe.E011",
    )


CALL_SHAPES = {
    "request": "the request context and the request message",
    "requests": "the request context and an iterator of the request messages (async, or a "
    "plain one for a `def` controller)",
}


def route_function(route: Route) -> str:
    """The snake_case name genproto gives the controller of ``route``."""
    from microframe.utils.names import snake

    return snake(route.method)


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
    E011, W004)."""
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
        return [router_problem(
            f"ROOT_ROUTER {path!r} cannot be imported: {type(err).__name__}: {err}"
        )]
    raw = getattr(module, "routes", None)
    if raw is None:
        return [router_problem(f"Router module {path!r} has no `routes` list.")]
    if not isinstance(raw, (list, tuple)):
        return [router_problem(
            f"`routes` of router module {path!r} must be a list, not {short_repr(raw)}."
        )]
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
        else:
            problem = signature_problem(path, entry)
            if problem is not None:
                errors.append(problem)
        if entry.full_method in seen:
            errors.append(route_problem(f"Router {path!r}: {entry.full_method} is routed twice."))
        seen.add(entry.full_method)
    if count == 0:
        errors.append(no_routes(path))
    return errors


def unknown_method(name: Any, routes: list[Route]) -> Error:
    """Return microframe.E015: ``name``, a key of GRPC["METHOD_TIMEOUTS"], is no method of
    ``routes``."""
    served = sorted(route.full_method for route in routes)
    wildcards = sorted({f"/{route.service}/*" for route in routes})
    if isinstance(name, str) and "/" not in name:  # a bare method name
        guesses = [m for m in served if m.rpartition("/")[2] == name]
    else:
        near = close_key(name, {*served, *wildcards}) if isinstance(name, str) else None
        guesses = [near] if near else []
    guess = f"Did you mean {' or '.join(repr(g) for g in guesses)}? " if guesses else ""
    well_formed = isinstance(name, str) and name.startswith("/") and name.count("/") == 2
    what = (
        "which is no method this service serves" if well_formed
        else 'which is not a full method name ("/package.Service/Method")'
    )
    return Error(
        f'GRPC["METHOD_TIMEOUTS"] names {short_repr(name)}, {what}.',
        hint=f"{guess}Name methods as the router routes them, or \"/package.Service/*\" for "
        f"every method of a service; it serves: {', '.join(served) or 'nothing'}.",
        id="microframe.E015",
    )


@register(Tags.settings, Tags.router)
def check_method_timeouts(**kwargs: Any) -> list[CheckMessage]:
    """Check that every key of GRPC["METHOD_TIMEOUTS"] is a method the router serves, or
    ``/package.Service/*`` of a service it serves (microframe.E015). Its values are checked
    with GRPC (microframe.E014); nothing is said when the router does not load (E004, E010)."""
    grpc = dict_setting("GRPC")
    table = grpc.get("METHOD_TIMEOUTS") if isinstance(grpc, dict) else None
    if not isinstance(table, dict) or not table:
        return []
    routes = loadable_routes()
    if routes is None:
        return []
    known = {route.full_method for route in routes} | {f"/{route.service}/*" for route in routes}
    return [unknown_method(name, routes) for name in table if name not in known]
