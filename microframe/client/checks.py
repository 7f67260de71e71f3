"""System checks of the client library (tag ``client``).

- ``client.E001``: ``CLIENTS`` is not a dict of service names to dicts, or the options of a
  service are invalid (an unknown key, a bad type, a non-positive timeout, an unknown
  balancer or breaker mode).
- ``client.E002``: an entry of ``CLIENT_MIDDLEWARE`` does not import.
- ``client.E003``: ``CLIENT_MIDDLEWARE`` lists ``BalancerMiddleware`` before (outside)
  ``RetryMiddleware``: the balancer would choose once per call, and every retry would go to the
  instance that just failed.
- ``client.E004``: the ``METHOD_TIMEOUTS`` of a service is not a dict of method names
  (``"Get"`` or ``"/orders.Orders/Get"``) to positive numbers of seconds.
"""

from __future__ import annotations

from typing import Any

from microframe.conf import settings
from microframe.core.checks.messages import CheckMessage, Error
from microframe.core.checks.registry import Tags, register
from microframe.core.exceptions import ImproperlyConfigured


@register(Tags.client, Tags.settings)
def check_clients(**kwargs: Any) -> list[CheckMessage]:
    from microframe.client.balancers import make_balancer
    from microframe.client.options import (
        ClientOptions,
        MethodTimeoutsError,
        method_timeout_problems,
    )
    from microframe.utils.module_loading import import_string

    errors: list[CheckMessage] = []
    clients = getattr(settings, "CLIENTS", {})
    if not isinstance(clients, dict) or not all(isinstance(v, dict) for v in clients.values()):
        return [Error(
            "CLIENTS must be a dict of service names to dicts of options.",
            hint='e.g. CLIENTS = {"orders": {"TIMEOUT": 0.5, "BALANCER": "round_robin"}}',
            id="client.E001",
        )]
    for service, configured in clients.items():
        for problem in method_timeout_problems(configured.get("METHOD_TIMEOUTS", {})):
            errors.append(Error(
                f"CLIENTS[{service!r}]: {problem}",
                hint='e.g. "METHOD_TIMEOUTS": {"Get": 0.2, "/orders.Orders/List": 1.5} '
                "(seconds; a method's own timeout replaces TIMEOUT for it).",
                id="client.E004",
            ))
        try:
            options = ClientOptions.resolve(service)
            make_balancer(options.balancer)
            mode = options.breaker["MODE"]
            if mode not in ("hystrix", "sre"):
                raise ImproperlyConfigured(
                    f'BREAKER["MODE"] must be "hystrix" or "sre", not {mode!r}.'
                )
        except MethodTimeoutsError:
            pass  # client.E004, above
        except ImproperlyConfigured as err:
            errors.append(Error(
                f"CLIENTS[{service!r}]: {err}",
                hint="See the client options in the docs (topics/client.md).",
                id="client.E001",
            ))
    chain = list(getattr(settings, "CLIENT_MIDDLEWARE", []))
    factories: list[Any] = []
    for entry in chain:
        if isinstance(entry, str):
            try:
                factories.append(import_string(entry))
            except ImportError as err:
                errors.append(Error(
                    f"CLIENT_MIDDLEWARE entry {entry!r} cannot be imported: {err}",
                    hint="Check the dotted path; the built-in steps live in "
                    "microframe.client.middleware and microframe.client.breaker.",
                    id="client.E002",
                ))
        else:
            factories.append(entry)
    errors.extend(_check_retry_order(factories))
    return errors


def _check_retry_order(factories: list[Any]) -> list[CheckMessage]:
    """Each retry must choose its own instance: the balancer step inside the retry step."""
    from microframe.client.middleware import BalancerMiddleware, RetryMiddleware

    if BalancerMiddleware not in factories or RetryMiddleware not in factories:
        return []
    if factories.index(BalancerMiddleware) > factories.index(RetryMiddleware):
        return []
    return [Error(
        "CLIENT_MIDDLEWARE lists BalancerMiddleware before RetryMiddleware: every retry would "
        "go to the instance that just failed.",
        hint="List microframe.client.middleware.BalancerMiddleware after RetryMiddleware "
        "(the default's order).",
        id="client.E003",
    )]
