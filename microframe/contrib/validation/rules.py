"""Which messages carry protovalidate rules, and a validator for each, compiled at start-up.

The rules are protovalidate's (``buf/validate/validate.proto``): field rules
(``[(buf.validate.field).string.min_len = 1]``), CEL expressions on fields and messages, oneof
rules. ``protovalidate`` 1.x (the ``validate`` extra) evaluates every rule, the standard ones
included, with cel-python, a tree-walking interpreter: measured here, 0.4-0.5 ms for one CEL
expression or pattern and 13 ms for a message of three standard field rules, a hundred times
what serving the call costs. So the standard rules whose meaning is a comparison (lengths,
bounds, ``const``, ``in``/``not_in``, patterns, prefixes, ``required``, ``defined_only``, item
counts and ``unique``...) are compiled here, once per message type, into plain Python checks
that answer the same violations (rule id, message, field path: ``tests/contrib/validation``
compares them with protovalidate's on the same messages). A message type with any other rule
(a CEL expression, a well-known string format such as ``email``, a map or a timestamp rule,
oneof rules) is validated by protovalidate itself, whole; ``check`` says which ones
(``validation.W003``), with what they cost.

A message type whose fields (and the messages they hold, recursively) carry no rule at all has
no validator: its methods are left out of the middleware's chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from buf.validate import validate_pb2
from microframe.core.exceptions import ImproperlyConfigured

__all__ = ["MessageValidator", "Violation", "has_rules", "validator_for"]

_TYPE_MESSAGE = FieldDescriptor.TYPE_MESSAGE


@dataclass(frozen=True)
class Violation:
    """One broken rule: the field's path (``items[0].name``), the rule id, the message."""

    field: str
    rule_id: str
    message: str
    for_key: bool = False


class RulesNeedProtovalidate(ImproperlyConfigured):
    """A message's rules are evaluated by protovalidate, which is not installed."""


class RulesDoNotCompile(ImproperlyConfigured):
    """protovalidate cannot compile a message's rules (a CEL syntax error...)."""


class _Fallback(Exception):
    """A rule the compiler does not handle: the message type goes to protovalidate."""


Check = Callable[[Any, str, list[Violation]], None]

UNIQUE_MESSAGE = "repeated value must contain unique items"


def _field_rules(field: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field.GetOptions()
    if options.HasExtension(validate_pb2.field):
        return options.Extensions[validate_pb2.field]
    return None


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return (
        message is not None and _is_repeated(field) and message.GetOptions().map_entry
    )


def has_rules(descriptor: Descriptor, _seen: set[str] | None = None) -> bool:
    """Whether messages of ``descriptor`` carry any rule, in themselves or in the messages
    their fields hold (recursively)."""
    seen = _seen if _seen is not None else set()
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    if descriptor.GetOptions().HasExtension(validate_pb2.message):
        return True
    for oneof in descriptor.oneofs:
        if oneof.GetOptions().HasExtension(validate_pb2.oneof):
            return True
    for field in descriptor.fields:
        if _field_rules(field) is not None:
            return True
        if field.type == _TYPE_MESSAGE and has_rules(field.message_type, seen):
            return True
    return False


# -- Messages, as protovalidate words them --------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


# -- Scalar rules ----------------------------------------------------------------------------

_STRING_RULES = {
    "const", "len", "min_len", "max_len", "len_bytes", "min_bytes", "max_bytes", "pattern",
    "prefix", "suffix", "contains", "not_contains", "in", "not_in",
}
_BYTES_RULES = {"len", "min_len", "max_len"}
_NUMBER_RULES = {"const", "lt", "lte", "gt", "gte", "in", "not_in"}
_INTEGER_KINDS = {
    "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
    "sfixed32", "sfixed64",
}


def _set_fields(rules: Any) -> dict[str, Any]:
    return {descriptor.name: value for descriptor, value in rules.ListFields()}


def _string_checks(rules: Any) -> list[Check]:
    given = _set_fields(rules)
    if not set(given) <= _STRING_RULES:
        raise _Fallback(f"string rules {sorted(set(given) - _STRING_RULES)}")
    checks: list[Check] = []
    # rule: (fails(value, bound), message with {} for the bound)
    table: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
        "const": (lambda v, b: v != b, "must equal `{}`"),
        "len": (lambda v, b: len(v) != b, "must be {} characters"),
        "min_len": (lambda v, b: len(v) < b, "must be at least {} characters"),
        "max_len": (lambda v, b: len(v) > b, "must be at most {} characters"),
        "len_bytes": (lambda v, b: len(v.encode()) != b, "must be {} bytes"),
        "min_bytes": (lambda v, b: len(v.encode()) < b, "must be at least {} bytes"),
        "max_bytes": (lambda v, b: len(v.encode()) > b, "must be at most {} bytes"),
        "prefix": (lambda v, b: not v.startswith(b), "does not have prefix `{}`"),
        "suffix": (lambda v, b: not v.endswith(b), "does not have suffix `{}`"),
        "contains": (lambda v, b: b not in v, "does not contain substring `{}`"),
        "not_contains": (lambda v, b: b in v, "contains substring `{}`"),
    }
    for rule, bound in given.items():  # in the order of StringRules' fields, as protovalidate
        if rule in table:
            fails, text = table[rule]
            checks.append(_scalar_check(f"string.{rule}", fails, bound, text))
        elif rule == "pattern":
            import re2  # protovalidate's own dependency: RE2's syntax, as every protovalidate

            checks.append(_scalar_check(
                "string.pattern", lambda v, no_match: no_match(v), _no_match(re2.compile(bound)),
                _literal(f"does not match regex pattern `{bound}`"),
            ))
        elif rule == "in":
            values = list(bound)
            checks.append(_scalar_check("string.in", lambda v, s: v not in s, frozenset(values),
                                        _literal("must be in list " + _fmt(values))))
        elif rule == "not_in":
            values = list(bound)
            checks.append(_scalar_check("string.not_in", lambda v, s: v in s, frozenset(values),
                                        _literal("must not be in list " + _fmt(values))))
    return checks


def _literal(text: str) -> str:
    """``text`` as a format string that formats to itself."""
    return text.replace("{", "{{").replace("}", "}}")


def _no_match(compiled: Any) -> Callable[[str], bool]:
    """Whether RE2 finds no match of ``compiled`` in a value (CEL's ``matches``: a search).

    google-re2's ``search`` builds a Python match object and maps byte offsets back to
    characters, 12 µs a call measured here; the matcher under it answers in 1.6 µs, which
    is all a rule needs (matched or not)."""
    matcher = getattr(compiled, "_regexp", None)
    if matcher is None or not hasattr(matcher, "Match"):
        search = compiled.search
        return lambda v: search(v) is None
    import re2

    unanchored = re2._Anchor.UNANCHORED
    match = matcher.Match

    def fails(value: str) -> bool:
        data = value.encode()
        return bool(match(unanchored, data, 0, len(data))[0][0] == -1)

    return fails


def _bytes_checks(rules: Any) -> list[Check]:
    given = _set_fields(rules)
    if not set(given) <= _BYTES_RULES:
        raise _Fallback(f"bytes rules {sorted(set(given) - _BYTES_RULES)}")
    checks = []
    for rule, fails, message in (
        ("len", lambda v, n: len(v) != n, "must be {} bytes"),
        ("min_len", lambda v, n: len(v) < n, "must be at least {} bytes"),
        ("max_len", lambda v, n: len(v) > n, "must be at most {} bytes"),
    ):
        if rule in given:
            checks.append(_scalar_check(f"bytes.{rule}", fails, given[rule], message))
    return checks


def _scalar_check(
    rule_id: str, fails: Callable[[Any, Any], bool], bound: Any, message: str
) -> Check:
    text = message.format(bound)

    def check(value: Any, path: str, out: list[Violation]) -> None:
        if fails(value, bound):
            out.append(Violation(path, rule_id, text))

    check.fails = fails  # type: ignore[attr-defined]  # for the generated predicate
    check.bound = bound  # type: ignore[attr-defined]
    return check


def _range_check(kind: str, given: dict[str, Any]) -> Check:
    """gt/gte/lt/lte, alone or together (a range, or its complement when the upper bound is
    below the lower), as protovalidate's rules of each numeric type define them."""
    low = "gt" if "gt" in given else "gte" if "gte" in given else None
    high = "lt" if "lt" in given else "lte" if "lte" in given else None
    words = {
        "gt": "greater than", "gte": "greater than or equal to",
        "lt": "less than", "lte": "less than or equal to",
    }
    below: dict[str, Callable[[Any, Any], bool]] = {  # the value breaks the lower bound
        "gt": lambda v, b: v <= b, "gte": lambda v, b: v < b,
    }
    above: dict[str, Callable[[Any, Any], bool]] = {  # the value breaks the upper bound
        "lt": lambda v, b: v >= b, "lte": lambda v, b: v > b,
    }
    if low is None:
        assert high is not None
        text = f"must be {words[high]} {{}}"
        return _scalar_check(f"{kind}.{high}", above[high], given[high], text)
    if high is None:
        text = f"must be {words[low]} {{}}"
        return _scalar_check(f"{kind}.{low}", below[low], given[low], text)
    lo, hi = given[low], given[high]
    breaks_low, breaks_high = below[low], above[high]
    if hi >= lo:
        rule_id = f"{kind}.{low}_{high}"
        text = f"must be {words[low]} {lo} and {words[high]} {hi}"

        def fails(v: Any) -> bool:
            return breaks_low(v, lo) or breaks_high(v, hi)
    else:
        rule_id = f"{kind}.{low}_{high}_exclusive"
        text = f"must be {words[low]} {lo} or {words[high]} {hi}"

        def fails(v: Any) -> bool:
            return breaks_low(v, lo) and breaks_high(v, hi)

    def check(value: Any, path: str, out: list[Violation]) -> None:
        if fails(value):
            out.append(Violation(path, rule_id, text))

    check.fails = fails  # type: ignore[attr-defined]  # for the generated predicate
    return check


def _number_checks(kind: str, rules: Any) -> list[Check]:
    given = _set_fields(rules)
    if not set(given) <= _NUMBER_RULES:
        raise _Fallback(f"{kind} rules {sorted(set(given) - _NUMBER_RULES)}")
    checks = []
    if "const" in given:
        checks.append(_scalar_check(f"{kind}.const", lambda v, c: v != c, given["const"],
                                    "must equal {}"))
    if any(k in given for k in ("gt", "gte", "lt", "lte")):
        checks.append(_range_check(kind, given))
    if "in" in given:
        values = list(given["in"])
        checks.append(_scalar_check(f"{kind}.in", lambda v, s: v not in s, frozenset(values),
                                    _literal("must be in list " + _fmt(values))))
    if "not_in" in given:
        values = list(given["not_in"])
        checks.append(_scalar_check(f"{kind}.not_in", lambda v, s: v in s, frozenset(values),
                                    _literal("must not be in list " + _fmt(values))))
    return checks


def _enum_checks(field: FieldDescriptor, rules: Any) -> list[Check]:
    given = _set_fields(rules)
    if not set(given) <= {"const", "defined_only", "in", "not_in"}:
        raise _Fallback("enum rules")
    checks = []
    if "const" in given:
        checks.append(_scalar_check("enum.const", lambda v, c: v != c, given["const"],
                                    "must equal {}"))
    if given.get("defined_only"):
        defined = frozenset(v.number for v in field.enum_type.values)
        checks.append(_scalar_check("enum.defined_only", lambda v, s: v not in s, defined,
                                    "value must be one of the defined enum values"))
    if "in" in given:
        values = list(given["in"])
        checks.append(_scalar_check("enum.in", lambda v, s: v not in s, frozenset(values),
                                    "must be in list " + _fmt(values)))
    if "not_in" in given:
        values = list(given["not_in"])
        checks.append(_scalar_check("enum.not_in", lambda v, s: v in s, frozenset(values),
                                    "must not be in list " + _fmt(values)))
    return checks


def _value_checks(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> list[Any]:
    """The checks of one value of ``field`` (the field itself, or one item of it)."""
    if rules.cel or rules.cel_expression:
        raise _Fallback("CEL expressions")
    kind = rules.WhichOneof("type")
    if kind is None:
        return []
    typed = getattr(rules, kind)
    if kind == "string":
        return _string_checks(typed)
    if kind == "bytes":
        return _bytes_checks(typed)
    if kind in _INTEGER_KINDS:
        return _number_checks(kind, typed)
    if kind == "bool":
        given = _set_fields(typed)
        if set(given) - {"const"}:
            raise _Fallback("bool rules")
        if "const" in given:
            return [_scalar_check("bool.const", lambda v, c: v != c, given["const"],
                                  "must equal " + _fmt(given["const"]))]
        return []
    if kind == "enum":
        return _enum_checks(field, typed)
    raise _Fallback(f"{kind} rules")


def _zero(field: FieldDescriptor) -> Any:
    if field.type == _TYPE_MESSAGE:
        return None
    return field.default_value


# -- Messages --------------------------------------------------------------------------------


class MessageValidator:
    """Validate the messages of one type (see the module docstring).

    ``violations(message)`` returns the broken rules, ``[]`` for a valid message.
    ``compiled`` says whether the checks are this module's (else protovalidate's, and
    ``fallback_reason`` says which rule sent it there).
    """

    def __init__(
        self, descriptor: Descriptor, registry: dict[str, MessageValidator | None]
    ) -> None:
        self.descriptor = descriptor
        self.compiled = True
        self.fallback_reason = ""
        self._checks: list[Check] = []
        self._specs: list[_FieldSpec] = []
        #: ``valid(message)``: whether the message breaks no rule (generated code; None for
        #: protovalidate's types). A valid message, the common case, costs only that.
        self.valid: Callable[[Any], bool] | None = None
        registry[descriptor.full_name] = self
        try:
            self._checks = self._compile(registry)
            self.valid = _predicate(descriptor.full_name, self._specs)
        except _Fallback as why:
            self.compiled = False
            self.fallback_reason = str(why)
            try:
                self._checks = [self._protovalidate()]
            except BaseException:
                del registry[descriptor.full_name]
                raise

    def violations(self, message: Any) -> list[Violation]:
        valid = self.valid
        if valid is not None and valid(message):
            return []
        out: list[Violation] = []
        for check in self._checks:
            check(message, "", out)
        return out

    def check_into(self, message: Any, prefix: str, out: list[Violation]) -> None:
        for check in self._checks:
            check(message, prefix, out)

    # The compiler.

    def _compile(self, registry: dict[str, MessageValidator | None]) -> list[Any]:
        descriptor = self.descriptor
        if descriptor.GetOptions().HasExtension(validate_pb2.message):
            raise _Fallback("message rules")
        for oneof in descriptor.oneofs:
            if oneof.GetOptions().HasExtension(validate_pb2.oneof):
                raise _Fallback("oneof rules")
        checks = []
        for field in descriptor.fields:
            check = self._field_check(field, registry)
            if check is not None:
                checks.append(check)
        return checks

    def _field_check(
        self, field: FieldDescriptor, registry: dict[str, MessageValidator | None]
    ) -> Any:
        rules = _field_rules(field)
        name = field.name
        repeated = _is_repeated(field)
        nested = None
        if field.type == _TYPE_MESSAGE:
            if _is_map(field):
                if rules is not None or has_rules(field.message_type):
                    raise _Fallback("map rules")
                return None
            nested = validator_for(field.message_type, registry)
            if nested is not None and not nested.compiled:
                raise _Fallback(
                    f"rules of {field.message_type.full_name}: {nested.fallback_reason}"
                )
        if rules is None and nested is None:
            return None
        if rules is not None and (rules.cel or rules.cel_expression):
            raise _Fallback("CEL expressions")
        ignore = rules.ignore if rules is not None else 0
        if ignore == validate_pb2.IGNORE_ALWAYS:
            return None
        if ignore not in (validate_pb2.IGNORE_UNSPECIFIED, validate_pb2.IGNORE_IF_ZERO_VALUE):
            raise _Fallback(f"ignore {ignore}")
        required = bool(rules is not None and rules.required)
        if repeated:
            return self._repeated_check(field, rules, nested, required)
        values = _value_checks(field, rules) if rules is not None else []
        presence = bool(field.has_presence)
        zero = _zero(field)
        skip_zero = ignore == validate_pb2.IGNORE_IF_ZERO_VALUE

        self._specs.append(_FieldSpec(
            name, presence, required, skip_zero, zero, values, nested, repeated=False
        ))

        def check(message: Any, prefix: str, out: list[Violation]) -> None:
            path = prefix + name
            if presence:
                if not message.HasField(name):
                    if required:
                        out.append(Violation(path, "required", "value is required"))
                    return
                value = getattr(message, name)
            else:
                value = getattr(message, name)
                if value == zero:
                    if required:
                        out.append(Violation(path, "required", "value is required"))
                        return
                    if skip_zero:
                        return
            for value_check in values:
                value_check(value, path, out)
            if nested is not None:
                nested.check_into(value, path + ".", out)

        return check

    def _repeated_check(
        self,
        field: FieldDescriptor,
        rules: validate_pb2.FieldRules | None,
        nested: MessageValidator | None,
        required: bool,
    ) -> Any:
        name = field.name
        own: list[Any] = []
        items: list[Any] = []
        unique = False
        if rules is not None:
            kind = rules.WhichOneof("type")
            if kind not in (None, "repeated"):
                raise _Fallback(f"{kind} rules on a repeated field")
            if kind == "repeated":
                given = _set_fields(rules.repeated)
                if set(given) - {"min_items", "max_items", "unique", "items"}:
                    raise _Fallback("repeated rules")
                if "min_items" in given:
                    own.append(_scalar_check(
                        "repeated.min_items", lambda v, n: len(v) < n, given["min_items"],
                        "must contain at least {} item(s)",
                    ))
                if "max_items" in given:
                    own.append(_scalar_check(
                        "repeated.max_items", lambda v, n: len(v) > n, given["max_items"],
                        "must contain no more than {} item(s)",
                    ))
                unique = bool(given.get("unique"))
                if unique and field.type == _TYPE_MESSAGE:
                    raise _Fallback("unique messages")
                if "items" in given:
                    item_rules = given["items"]
                    if item_rules.required or item_rules.ignore:
                        raise _Fallback("item presence rules")
                    items = _value_checks(field, item_rules)

        self._specs.append(_FieldSpec(
            name, False, required, False, None, items, nested, repeated=True, own=own,
            unique=unique,
        ))

        def check(message: Any, prefix: str, out: list[Violation]) -> None:
            path = prefix + name
            values = getattr(message, name)
            if not values:
                if required:
                    out.append(Violation(path, "required", "value is required"))
            for own_check in own:
                own_check(values, path, out)
            if unique and len(set(values)) != len(values):
                out.append(Violation(path, "repeated.unique", UNIQUE_MESSAGE))
            if items or nested is not None:
                for index, value in enumerate(values):
                    item_path = f"{path}[{index}]"
                    for item_check in items:
                        item_check(value, item_path, out)
                    if nested is not None:
                        nested.check_into(value, item_path + ".", out)

        return check

    def _protovalidate(self) -> Check:
        descriptor = self.descriptor
        try:
            validator = _shared_protovalidate()
        except ImportError as err:
            raise RulesNeedProtovalidate(
                f"The rules of {descriptor.full_name} ({self.fallback_reason}) are evaluated "
                f'by protovalidate, which is not installed: pip install "microframe-grpc[validate]"'
            ) from err
        # Compile now (a rule that does not compile fails at start-up, not on a call): on an
        # empty message, which also finds the functions cel-python does not know.
        try:
            validator.collect_violations(_message_class(descriptor)())
        except Exception as err:
            if not _compile_error(err):
                pass  # an evaluation error of the empty message only (a division by zero...)
            else:
                raise RulesDoNotCompile(
                    f"{descriptor.file.name}: the rules of {descriptor.full_name} do not "
                    f"compile: {describe_cel_error(err)}"
                ) from err
        collect = validator.collect_violations

        def check(message: Any, prefix: str, out: list[Violation]) -> None:
            for found in collect(message):
                proto = found.proto
                if proto.HasField("field"):
                    path = prefix + field_path(proto.field)
                else:
                    path = prefix.rstrip(".")
                out.append(Violation(path, proto.rule_id, proto.message, proto.for_key))

        return check


_PROTOVALIDATE: Any = None


@dataclass
class _FieldSpec:
    """What the generated predicate checks of one field (the checks' ``fails`` and ``bound``)."""

    name: str
    presence: bool
    required: bool
    skip_zero: bool
    zero: Any
    checks: list[Any]
    nested: MessageValidator | None
    repeated: bool
    own: list[Any] = dataclass_field(default_factory=list)
    unique: bool = False


def _predicate(message_name: str, specs: list[_FieldSpec]) -> Callable[[Any], bool]:
    """Compile ``valid(message)`` for ``specs``: one Python function whose lines test every
    rule inline (``if _f3(v, _b3): return False``), without the per-rule closures, the paths
    and the list of violations of the full check. Measured on the example's HelloRequest (two
    rules): 0.28 µs a call, against 1.5 µs for the closures."""
    constants: dict[str, Any] = {}
    lines = ["def valid(m):"]

    def const(value: Any) -> str:
        key = f"_c{len(constants)}"
        constants[key] = value
        return key

    def tests(checks: list[Any], var: str, indent: str) -> None:
        for check in checks:
            fails = const(check.fails)
            if hasattr(check, "bound"):
                lines.append(f"{indent}if {fails}({var}, {const(check.bound)}): return False")
            else:
                lines.append(f"{indent}if {fails}({var}): return False")

    for spec in specs:
        attribute = f"m.{spec.name}"
        if spec.repeated:
            lines.append(f"    v = {attribute}")
            if spec.required:
                lines.append("    if not v: return False")
            tests(spec.own, "v", "    ")
            if spec.unique:
                lines.append("    if len(set(v)) != len(v): return False")
            if spec.checks or spec.nested is not None:
                lines.append("    for x in v:")
                tests(spec.checks, "x", "        ")
                if spec.nested is not None:
                    lines.append(f"        if not {const(spec.nested)}.valid(x): return False")
            continue
        nested = (
            [f"if not {const(spec.nested)}.valid(v): return False"]
            if spec.nested is not None else []
        )
        if spec.presence:
            lines.append(f"    if m.HasField({spec.name!r}):")
            lines.append(f"        v = {attribute}")
            tests(spec.checks, "v", "        ")
            lines.extend("        " + line for line in nested)
            if spec.required:
                lines.append("    else: return False")
            continue
        lines.append(f"    v = {attribute}")
        indent = "    "
        if spec.required:
            lines.append(f"    if v == {const(spec.zero)}: return False")
        elif spec.skip_zero:
            lines.append(f"    if v != {const(spec.zero)}:")
            lines.append("        pass")
            indent = "        "
        tests(spec.checks, "v", indent)
        lines.extend(indent + line for line in nested)
    lines.append("    return True")
    namespace: dict[str, Any] = dict(constants)
    exec(compile("\n".join(lines), f"<rules of {message_name}>", "exec"), namespace)
    return namespace["valid"]  # type: ignore[no-any-return]


def _compile_error(err: Exception) -> bool:
    """Whether ``err``, raised validating an empty message, says a rule cannot work at all
    (a syntax error, an unknown function or field), not that this message's values broke an
    evaluation."""
    name = type(err).__name__
    return name in ("CompilationError", "CELParseError") or "undeclared reference" in str(err)


def describe_cel_error(err: Exception) -> str:
    """``err`` in one line, without cel-python's dump of the whole evaluation context."""
    text = str(err.args[0]) if err.args else str(err)
    text = text.split(" (in activation", 1)[0].strip().strip("(\"'")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _shared_protovalidate() -> Any:
    global _PROTOVALIDATE
    if _PROTOVALIDATE is None:
        import protovalidate

        _PROTOVALIDATE = protovalidate.Validator()
    return _PROTOVALIDATE


def _message_class(descriptor: Descriptor) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def field_path(path: validate_pb2.FieldPath) -> str:
    """A protovalidate field path as text: ``items[0].name``, ``labels["env"]``."""
    text = ""
    for element in path.elements:
        text += ("." if text else "") + element.field_name
        which = element.WhichOneof("subscript")
        if which == "index":
            text += f"[{element.index}]"
        elif which == "string_key":
            text += '["' + element.string_key.replace('"', '\\"') + '"]'
        elif which is not None:
            key = getattr(element, which)
            text += f"[{_fmt(key)}]"
    return text


def validator_for(
    descriptor: Descriptor, registry: dict[str, MessageValidator | None] | None = None
) -> MessageValidator | None:
    """The validator of ``descriptor``'s messages, or None when they carry no rule.

    ``registry`` caches the validators by message name (a recursive message type is compiled
    once); the middleware keeps one for the whole server.
    """
    registry = registry if registry is not None else _VALIDATORS
    name = descriptor.full_name
    if name in registry:
        return registry[name]
    if not has_rules(descriptor):
        registry[name] = None
        return None
    return MessageValidator(descriptor, registry)


_VALIDATORS: dict[str, MessageValidator | None] = {}
