"""System checks of the HTTP/JSON gateway (tag ``gateway``).

- ``gateway.E001``: ``GATEWAY`` is not a dict, has unknown keys, or a bad value: a timeout or
  a limit (``TIMEOUT``, ``MAX_BODY_BYTES``, ``MAX_STREAM_MESSAGES``...) that is not a positive
  number, an ``ADDRESS`` that is not
  ``host:port``, ``FORWARD_HEADERS`` that is not a list of header names.
- ``gateway.E001`` too: ``CORS`` is not a dict, has unknown keys, lists that are not lists of
  strings, an origin that is not ``scheme://host[:port]`` or ``*``, a ``MAX_AGE`` that is not a
  whole number of seconds; ``OPENAPI``, ``DOCS`` or ``GRPC_WEB`` that is not a boolean.
- ``gateway.W001``: ``CORS`` allows every origin (``*``) with credentials: browsers refuse that
  combination, and answering each origin with credentials instead would let any site act as
  the user.
- ``gateway.E002``: a ``google.api.http`` annotation of a routed RPC has a path template the
  gateway cannot read, or a variable, ``body`` or ``response_body`` naming no field.
"""

from __future__ import annotations

import re
from typing import Any

from microframe.conf import global_settings, settings
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
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
                "MAX_METADATA_BYTES",
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
    for key in ("OPENAPI", "DOCS", "GRPC_WEB"):
        if not isinstance(config.get(key), bool):
            errors.append(_error(
                f'GATEWAY["{key}"] must be True or False, not {config.get(key)!r}.'
            ))
    errors += _cors_messages(config.get("CORS"))
    return errors


def _cors_messages(cors: Any) -> list[CheckMessage]:
    if not isinstance(cors, dict):
        return [_error(f'GATEWAY["CORS"] must be a dict, not {type(cors).__name__}.')]
    errors = unknown_keys('GATEWAY["CORS"]', cors, frozenset(global_settings.GATEWAY["CORS"]),
                          "gateway.E001")
    for key in ("ALLOW_ORIGINS", "ALLOW_METHODS", "ALLOW_HEADERS", "EXPOSE_HEADERS"):
        value = cors.get(key, [])
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            errors.append(_error(
                f'GATEWAY["CORS"]["{key}"] must be a list of strings, not {value!r}.'
            ))
            continue
        if key == "ALLOW_ORIGINS":
            for origin in value:
                if origin != "*" and not _ORIGIN.fullmatch(origin.rstrip("/")):
                    errors.append(_error(
                        f'GATEWAY["CORS"]["ALLOW_ORIGINS"]: {origin!r} is no origin '
                        '(scheme://host[:port], or "*").'
                    ))
    age = cors.get("MAX_AGE", 0)
    if isinstance(age, bool) or not isinstance(age, int) or age < 0:
        errors.append(_error(
            f'GATEWAY["CORS"]["MAX_AGE"] must be seconds (an int >= 0), not {age!r}.'
        ))
    if not isinstance(cors.get("ALLOW_CREDENTIALS", False), bool):
        errors.append(_error('GATEWAY["CORS"]["ALLOW_CREDENTIALS"] must be True or False.'))
    origins = cors.get("ALLOW_ORIGINS")
    wildcard = isinstance(origins, list | tuple) and "*" in origins
    if cors.get("ALLOW_CREDENTIALS") is True and wildcard:
        errors.append(Warning(
            'GATEWAY["CORS"] allows every origin ("*") with ALLOW_CREDENTIALS: browsers refuse '
            "credentials with a wildcard, and the gateway answers each origin by name instead, "
            "so any site can call the service as the signed-in user.",
            hint='List the origins allowed: "ALLOW_ORIGINS": ["https://app.example.com"].',
            id="gateway.W001",
        ))
    return errors


#: An origin: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:]+(:\d{1,5})?", re.I)


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
