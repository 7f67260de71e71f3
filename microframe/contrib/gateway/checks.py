"""System checks of the HTTP/JSON gateway (tag ``gateway``).

- ``gateway.E001``: ``GATEWAY`` is not a dict, has unknown keys, or a bad value: a timeout or
  a limit (``TIMEOUT``, ``MAX_BODY_BYTES``, ``MAX_STREAM_MESSAGES``...) that is not a positive
  number, an ``ADDRESS`` that is not
  ``host:port``, ``FORWARD_HEADERS`` that is not a list of header names.
- ``gateway.E002``: a ``google.api.http`` annotation of a routed RPC has a path template the
  gateway cannot read, or a variable, ``body`` or ``response_body`` naming no field.
"""

from __future__ import annotations

from typing import Any

from microframe.conf import global_settings, settings
from microframe.core.checks.messages import CheckMessage, Error, unknown_keys
from microframe.core.checks.registry import Tags, register

HINT = (
    'e.g. GATEWAY = {"TIMEOUT": 5.0, "MAX_BODY_BYTES": 1 << 20, '
    '"FORWARD_HEADERS": ["authorization"]}'
)


def _error(message: str) -> Error:
    return Error(message, hint=HINT, id="gateway.E001")


@register(Tags.gateway)
def check_gateway_setting(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "GATEWAY", None)
    if not isinstance(config, dict):
        return [_error(f"GATEWAY must be a dict, not {type(config).__name__}.")]
    errors = unknown_keys("GATEWAY", config, frozenset(global_settings.GATEWAY), "gateway.E001")
    for key in ("TIMEOUT", "MAX_BODY_BYTES", "MAX_STREAM_MESSAGES", "MAX_JSON_DEPTH",
                "HEADER_TIMEOUT", "BODY_TIMEOUT", "SEND_TIMEOUT", "MAX_HEADER_BYTES"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(_error(f'GATEWAY["{key}"] must be a positive number, not {value!r}.'))
    expose = config.get("EXPOSE_ERRORS")
    if expose is not None and not isinstance(expose, bool):
        errors.append(_error(
            f'GATEWAY["EXPOSE_ERRORS"] must be True, False or None, not {expose!r}.'
        ))
    address = config.get("ADDRESS")
    if address is not None:
        from microframe.discovery.instance import InvalidInstance, split_address

        try:
            split_address(str(address))
        except InvalidInstance as err:
            errors.append(_error(f'GATEWAY["ADDRESS"]: {err}.'))
    headers = config.get("FORWARD_HEADERS")
    if not isinstance(headers, list | tuple) or not all(isinstance(h, str) and h for h in headers):
        errors.append(_error(
            f'GATEWAY["FORWARD_HEADERS"] must be a list of header names, not {headers!r}.'
        ))
    return errors


@register(Tags.gateway)
def check_http_rules(**kwargs: Any) -> list[CheckMessage]:
    from microframe.contrib.gateway.rules import TemplateError, bindings_of
    from microframe.core.router import load_routes

    try:
        routes = load_routes(getattr(settings, "ROOT_ROUTER", None))
    except Exception:  # noqa: BLE001 - a broken router is microframe.E004's or E010's to report
        return []
    errors: list[CheckMessage] = []
    for route in routes:
        pool = route.request_class.DESCRIPTOR.file.pool
        descriptor = pool.FindMethodByName(f"{route.service}.{route.method}")
        try:
            bindings_of(descriptor)
        except TemplateError as err:
            errors.append(Error(
                f"{route.full_method}: its google.api.http rule cannot be served: {err}.",
                hint='Path templates look like "/v1/{name=shelves/*}/books/{id}:verb".',
                id="gateway.E002",
            ))
    return errors
