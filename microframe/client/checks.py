"""System checks of the client library (tag ``client``).

- ``client.E001``: ``CLIENTS`` is not a dict of service names to dicts, or the options of a
  service are invalid (an unknown key, a bad type, a non-positive timeout, an unknown
  balancer or breaker mode).
- ``client.E002``: an entry of ``CLIENT_MIDDLEWARE`` does not import.
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
    from microframe.client.options import ClientOptions
    from microframe.utils.module_loading import import_string

    errors: list[CheckMessage] = []
    clients = getattr(settings, "CLIENTS", {})
    if not isinstance(clients, dict) or not all(isinstance(v, dict) for v in clients.values()):
        return [Error(
            "CLIENTS must be a dict of service names to dicts of options.",
            hint='e.g. CLIENTS = {"orders": {"TIMEOUT": 0.5, "BALANCER": "round_robin"}}',
            id="client.E001",
        )]
    for service in clients:
        try:
            options = ClientOptions.resolve(service)
            make_balancer(options.balancer)
            mode = options.breaker["MODE"]
            if mode not in ("hystrix", "sre"):
                raise ImproperlyConfigured(f'BREAKER["MODE"] must be "hystrix" or "sre", not {mode!r}.')
        except ImproperlyConfigured as err:
            errors.append(Error(
                f"CLIENTS[{service!r}]: {err}",
                hint="See the client options in the docs (topics/client.md).",
                id="client.E001",
            ))
    for entry in getattr(settings, "CLIENT_MIDDLEWARE", []):
        if isinstance(entry, str):
            try:
                import_string(entry)
            except ImportError as err:
                errors.append(Error(
                    f"CLIENT_MIDDLEWARE entry {entry!r} cannot be imported: {err}",
                    hint="Check the dotted path; the built-in steps live in microframe.client.middleware "
                    "and microframe.client.breaker.",
                    id="client.E002",
                ))
    return errors
