"""The HTTP routes of RPCs: ``POST /<package.Service>/<Method>`` for every RPC, and the routes its
``google.api.http`` annotation declares (``get: "/v1/orders/{id}"``, ``body: "*"``...).

A path template (``/v1/{name=shelves/*}/books/{book_id}:publish``) becomes one regular
expression, compiled once at start-up; its variables are bound, in order, to the request's
fields (dotted paths). The grammar is Google's ``google.api.HttpRule``: segments ``*`` (one
segment), ``**`` (any number), literals, ``{field}`` and ``{field=segments}`` variables, and a
trailing ``:verb``. Written here, small and tested, because no maintained Python package
exposes it outside a whole gateway framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

VERBS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A ``google.api.http`` path template that does not follow the grammar."""


@dataclass(frozen=True)
class Binding:
    """One HTTP route of an RPC."""

    verb: str  # GET, POST...
    template: str
    regex: re.Pattern[str]
    variables: tuple[str, ...]  # the field path of each capture group, in order
    body: str  # "": no body (the query string holds the fields), "*": the whole request, or a field
    response_body: str  # "": the whole reply, or the field of the reply to answer with
    method: Any  # the MethodDescriptor
    path: str  # /package.Service/Method

    def match(self, path: str) -> dict[str, str] | None:
        """The variables of ``path`` (raw: percent-encoded), decoded, or None when it does not
        match; ValueError when a variable is not UTF-8 once decoded."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        try:
            return {field: unquote(value, errors="strict")
                    for field, value in zip(self.variables, found.groups(), strict=True)}
        except UnicodeDecodeError:
            raise ValueError(f"{path}: a path parameter is not UTF-8") from None


#: A slash between the segments of a multi-segment variable: as sent, or percent-encoded as
#: OpenAPI clients (Swagger UI) send a path parameter that holds one.
_VARIABLE_SLASH = r"(?:/|%2[Ff])"


def _segments(text: str, where: str, *, encoded_slash: bool = False) -> str:
    """The pattern of ``text``'s segments; ``encoded_slash``: inside a variable of several
    segments (``{name=shelves/*}``), whose slashes may come as ``%2F``."""
    one = r"(?:(?!%2[Ff])[^/])+" if encoded_slash else r"[^/]+"
    parts = []
    for segment in text.split("/"):
        if segment == "*":
            parts.append(one)
        elif segment == "**":
            parts.append(r".*")
        elif segment and re.fullmatch(r"[^{}*:]+", segment):
            parts.append(re.escape(segment))
        else:
            raise TemplateError(f"{where}: bad segment {segment!r}")
    return (_VARIABLE_SLASH if encoded_slash else "/").join(parts)


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """The regular expression of a path template, and the field path of each of its groups."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    body, verb = template, ""
    last = template.rsplit("/", 1)[-1]
    if ":" in last and "}" not in last[last.index(":"):]:
        body, verb = template[: template.rindex(":")], template[template.rindex(":"):]
    pattern: list[str] = []
    variables: list[str] = []
    rest = body[1:]
    position = 0
    for found in re.finditer(r"\{([^{}]*)\}|([^{}]+)", rest):
        if found.start() != position:
            break  # a brace that opens or closes nothing
        variable, literal = found.groups()
        if variable is not None:
            field, _, segments = variable.partition("=")
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field):
                raise TemplateError(f"{template!r}: bad variable {field!r}")
            inner = _segments(segments, repr(template), encoded_slash="/" in segments) \
                if segments else r"[^/]+"
            pattern.append(f"({inner})")
            variables.append(field)
        else:
            pieces = literal.split("/")
            pattern.append("/".join(_segments(p, repr(template)) if p else "" for p in pieces))
        position = found.end()
    if position != len(rest):
        raise TemplateError(f"{template!r}: unbalanced braces")
    return re.compile("/" + "".join(pattern) + re.escape(verb)), tuple(variables)


def bindings_of(method: Any) -> list[Binding]:
    """Every HTTP route of ``method``: its ``google.api.http`` rule(s), then the default
    ``POST /<package.Service>/<Method>`` with the whole request as the body."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    found: list[Binding] = []
    rule = _http_rule(method)
    if rule is not None:
        for each in (rule, *rule.additional_bindings):
            kind = each.WhichOneof("pattern")
            if kind is None:
                continue
            if kind == "custom":
                verb, template = each.custom.kind.upper(), each.custom.path
            else:
                verb, template = kind.upper(), getattr(each, kind)
            regex, variables = compile_template(template)
            for what, field_path in (("body", each.body), ("response_body", each.response_body)):
                if field_path and field_path != "*":
                    where = method.output_type if what == "response_body" else method.input_type
                    try:
                        field_of(where, field_path)
                    except KeyError:
                        raise TemplateError(
                            f"{template!r}: {what} {field_path!r} is not a field of "
                            f"{where.full_name}"
                        ) from None
            for variable in variables:
                try:
                    field_of(method.input_type, variable)
                except KeyError:
                    raise TemplateError(
                        f"{template!r}: {variable!r} is not a field of "
                        f"{method.input_type.full_name}"
                    ) from None
            found.append(Binding(
                verb, template, regex, variables, each.body, each.response_body, method, path
            ))
    found.append(Binding("POST", path, re.compile(re.escape(path)), (), "*", "", method, path))
    return found


def routed_bindings(routes: list[Any], pool: Any) -> list[Binding]:
    """Every HTTP route of the RPCs ``routes`` serve (the router's), each method's in its rule's
    order, their descriptors from ``pool``."""
    found: list[Binding] = []
    for route in routes:
        found += bindings_of(pool.FindMethodByName(f"{route.service}.{route.method}"))
    return found


def _http_rule(method: Any) -> Any:
    try:
        from google.api import annotations_pb2
    except ImportError:  # googleapis-common-protos missing: only the default routes
        return None
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    return options.Extensions[annotations_pb2.http]


def field_of(message: Any, path: str) -> Any:
    """The field descriptor at dotted ``path`` (proto or JSON names) of message descriptor
    ``message``; KeyError when there is none."""
    descriptor = message
    field = None
    for name in path.split("."):
        if descriptor is None:
            raise KeyError(path)
        field = descriptor.fields_by_name.get(name) or next(
            (f for f in descriptor.fields if f.json_name == name), None
        )
        if field is None:
            raise KeyError(path)
        descriptor = field.message_type
    return field


def text_value(field: Any, text: str) -> Any:
    """A path or query value (text) as the JSON value of ``field``."""
    from google.protobuf.descriptor import FieldDescriptor as F

    kind = field.type
    if kind == F.TYPE_BOOL:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ValueError(f"{field.name}: {text!r} is not a boolean")
    if kind in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_UINT32, F.TYPE_FIXED32):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{field.name}: {text!r} is not an integer") from None
    if kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{field.name}: {text!r} is not a number") from None
    if kind == F.TYPE_BYTES:
        # base64 has no spaces: a space is a '+' that the query string's decoding turned into one.
        return text.replace(" ", "+")
    return text  # strings, 64-bit integers (strings in JSON), enums by name, well-known types


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """``target["a"]["b"] = value`` for ``path`` ``a.b``."""
    *parents, last = path.split(".")
    for name in parents:
        child = target.setdefault(name, {})
        if not isinstance(child, dict):
            raise ValueError(f"{path}: {name} is not a message")
        target = child
    target[last] = value
