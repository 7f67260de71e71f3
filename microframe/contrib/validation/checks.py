"""System checks of validation (tag ``validation``).

- ``validation.E001``: ``VALIDATION`` is not a dict, has unknown keys, or ``RESPONSES`` is not a
  bool.
- ``validation.E002``: a message's rules need protovalidate (CEL expressions, string formats,
  map or timestamp rules...) and the ``validate`` extra is not installed.
- ``validation.E003``: a rule does not compile (a CEL expression with a syntax error, a pattern
  RE2 refuses...): reported with its proto file, message and field.
- ``validation.W001``: the served protos carry rules, and ``ValidationMiddleware`` is not in
  ``MIDDLEWARE``: nothing enforces them.
- ``validation.I001``: messages whose rules protovalidate evaluates (cel-python), not
  microframe's compiled checks, with what that costs a call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

from microframe.conf import settings
from microframe.core.checks.messages import CheckMessage, Error, Info, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register

MIDDLEWARE_PATH = "microframe.contrib.validation.middleware.ValidationMiddleware"
KNOWN_KEYS = frozenset({"RESPONSES"})
EXTRA_HINT = 'pip install "microframe-grpc[validate]"'


def _messages(routes: list[Any]) -> Iterator[Any]:
    """The request and reply message types of ``routes``, each once."""
    seen: set[str] = set()
    for route in routes:
        for cls in (route.request_class, route.response_class):
            descriptor = cls.DESCRIPTOR
            if descriptor.full_name not in seen:
                seen.add(descriptor.full_name)
                yield descriptor


def _with_rules(routes: list[Any]) -> list[Any]:
    from microframe.contrib.validation.rules import has_rules

    return [d for d in _messages(routes) if has_rules(d)]


def _expressions(descriptor: Any, seen: set[str]) -> Iterator[tuple[Any, str, str, str]]:
    """(message, field name or "", rule id, CEL expression) of every CEL rule reachable."""
    from buf.validate import validate_pb2

    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    options = descriptor.GetOptions()
    if options.HasExtension(validate_pb2.message):
        rules = options.Extensions[validate_pb2.message]
        for rule in rules.cel:
            yield descriptor, "", rule.id, rule.expression
        for expression in rules.cel_expression:
            yield descriptor, "", expression, expression
    for field in descriptor.fields:
        field_options = field.GetOptions()
        if field_options.HasExtension(validate_pb2.field):
            rules = field_options.Extensions[validate_pb2.field]
            for rule in rules.cel:
                yield descriptor, field.name, rule.id, rule.expression
            for expression in rules.cel_expression:
                yield descriptor, field.name, expression, expression
        if field.message_type is not None:
            yield from _expressions(field.message_type, seen)


def _rule_error(message: Any, field: str, rule_id: str, why: str, expression: str) -> Error:
    """validation.E003 of one rule, with its proto file, message and field."""
    where = f"{message.full_name}.{field}" if field else message.full_name
    return Error(
        f"{message.file.name}: {where}: rule {rule_id!r} does not compile: {why} "
        f"(in {expression!r})",
        hint="Fix the CEL expression in the proto and run genproto.",
        id="validation.E003",
    )


def _located(descriptor: Any, err: Exception) -> list[CheckMessage]:
    """The rules of ``descriptor`` that do not compile, each with its file and field: those
    with a syntax error, else those naming what ``err`` says CEL does not know; the whole
    message's error when no single expression is to blame."""
    import celpy  # protovalidate's dependency: the rules reached protovalidate

    rules = list(_expressions(descriptor, set()))
    environment = celpy.Environment()
    errors: list[CheckMessage] = []
    for message, field, rule_id, expression in rules:
        try:
            environment.compile(expression)
        except Exception as cel_error:
            text = str(cel_error).strip()
            first = text.splitlines()[0] if text else ""
            errors.append(_rule_error(
                message, field, rule_id, f"{type(cel_error).__name__}: {first}", expression
            ))
    undeclared = re.search(r"undeclared reference to '(\w+)", str(err))
    if not errors and undeclared:
        name = undeclared.group(1)
        errors = [
            _rule_error(
                message, field, rule_id,
                f"{name!r} is not a function or variable protovalidate knows", expression,
            )
            for message, field, rule_id, expression in rules
            if re.search(rf"\b{re.escape(name)}\b", expression)
        ]
    if not errors:
        errors.append(Error(
            f"{err}", hint="Fix the rule in the proto and run genproto.", id="validation.E003"
        ))
    return errors


@register(Tags.validation, Tags.settings)
def check_validation_settings(**kwargs: Any) -> list[CheckMessage]:
    configured = getattr(settings, "VALIDATION", {})
    if not isinstance(configured, dict):
        return [Error(f"VALIDATION must be a dict, not {type(configured).__name__}.",
                      hint='VALIDATION = {"RESPONSES": False}', id="validation.E001")]
    errors = unknown_keys("VALIDATION", configured, KNOWN_KEYS, "validation.E001")
    if not isinstance(configured.get("RESPONSES", False), bool):
        errors.append(Error('VALIDATION["RESPONSES"] must be True or False.',
                            id="validation.E001"))
    return errors


@register(Tags.validation, Tags.router)
def check_validation_rules(**kwargs: Any) -> list[CheckMessage]:
    from microframe.core.checks.router_checks import loadable_routes

    routes = loadable_routes()
    if not routes:
        return []
    ruled = _with_rules(routes)
    if not ruled:
        return []
    messages: list[CheckMessage] = []
    configured = getattr(settings, "MIDDLEWARE", [])
    well_formed = isinstance(configured, (list, tuple)) and all(
        isinstance(m, str) or callable(m) for m in configured
    )  # else the middleware checks report MIDDLEWARE itself
    middleware = [m if isinstance(m, str) else getattr(m, "__qualname__", "")
                  for m in configured] if well_formed else []
    if well_formed and not any(
        m == MIDDLEWARE_PATH or m.endswith("ValidationMiddleware") for m in middleware
    ):
        names = ", ".join(d.full_name for d in ruled)
        messages.append(Warning(
            f"The protos carry validation rules ({names}) and ValidationMiddleware is not in "
            "MIDDLEWARE: no request is checked against them.",
            hint=f'Add "{MIDDLEWARE_PATH}" to MIDDLEWARE (last, next to the controller).',
            id="validation.W001",
        ))
    from microframe.contrib.validation.rules import (
        RulesDoNotCompile,
        RulesNeedProtovalidate,
        validator_for,
    )

    # Whether it is installed, not imported: protovalidate and its CEL interpreter take ~11 MB,
    # which a service whose rules are all compiled (no CEL) never needs.
    protovalidate_missing = find_spec("protovalidate") is None
    evaluated: list[str] = []
    registry: dict[str, Any] = {}
    for descriptor in ruled:
        try:
            validator = validator_for(descriptor, registry)
        except RulesNeedProtovalidate as err:
            messages.append(Error(
                f"{descriptor.file.name}: {str(err).split(': pip install')[0]}.",
                hint=EXTRA_HINT, id="validation.E002",
            ))
            continue
        except RulesDoNotCompile as err:
            messages.extend(_located(descriptor, err))
            continue
        if validator is not None and not validator.compiled:
            evaluated.append(f"{descriptor.full_name} ({validator.fallback_reason})")
    if evaluated and not protovalidate_missing:
        messages.append(Info(
            "Evaluated by protovalidate (cel-python, about 0.5 ms per CEL expression or "
            "string format, per message): " + "; ".join(evaluated) + ". The other messages' "
            "rules run as compiled checks (microseconds).",
            id="validation.I001",
        ))
    return messages
