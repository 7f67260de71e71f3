"""The OpenAPI 3.1 document of the routes the gateway serves.

Built from the same bindings the gateway routes with (:mod:`.rules`), so the document and the
routes cannot disagree: every ``google.api.http`` rule and every default
``POST /<package.Service>/<Method>`` is an operation, with

- its path (a variable ``{name=shelves/*}`` as the parameter ``{name}``), its path parameters,
  and the query parameters of the fields the path and the body leave (nested message fields as
  ``page.size``, repeated ones repeated), as grpc-gateway's generator lays them out;
- the request body (the whole request, or its ``body`` field; a JSON array of requests for a
  client stream) and the reply (the whole reply or its ``response_body`` field; NDJSON for a
  server stream, a line per reply and an ``{"error": ...}`` last line on failure);
- the error body, ``google.rpc.Status`` with the code's name in ``status``, under the HTTP
  statuses the gateway itself answers for the route and ``default`` for the rest;
- schemas of the messages in the protobuf JSON mapping: lowerCamelCase names, 64-bit integers
  as strings, enums by name, the well-known types as their JSON forms (``Timestamp`` an RFC 3339
  string, ``Duration`` ``"1.5s"``, ``Struct`` any object...), maps as objects, oneofs as fields
  of which at most one is set;
- the proto comments as descriptions, when the protos are at hand
  (:mod:`microframe.codegen.comments`).

Written here because the maintained generators (grpc-gateway's ``protoc-gen-openapiv2``,
gnostic's ``protoc-gen-openapi``) are Go programs that would need a Go toolchain, write
OpenAPI 2 or miss the gateway's own routes and error statuses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from microframe.contrib.gateway.rules import Binding, field_of

logger = logging.getLogger("microframe.gateway")

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
NDJSON = "application/x-ndjson"
STATUS = "google.rpc.Status"
#: How deep message fields are expanded into query parameters (``a.b.c``); grpc-gateway stops
#: on recursion, this at a depth.
QUERY_DEPTH = 3

_VARIABLE = re.compile(r"\{([^}=]+)(?:=[^}]*)?\}")
_SHAPED = re.compile(r"\{([^}=]+)=([^}]*)\}")

# FieldDescriptor types (google.protobuf.descriptor.FieldDescriptor.TYPE_*).
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _FIXED64, _FIXED32, _BOOL, _STRING = range(1, 10)
_MESSAGE, _BYTES, _UINT32, _ENUM, _SFIXED32, _SFIXED64, _SINT32, _SINT64 = range(11, 19)

#: The JSON mapping writes the floating-point values that are no numbers as strings.
_NOT_NUMBERS = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}

_SCALARS: dict[int, dict[str, Any]] = {
    _DOUBLE: {"oneOf": [{"type": "number", "format": "double"}, _NOT_NUMBERS]},
    _FLOAT: {"oneOf": [{"type": "number", "format": "float"}, _NOT_NUMBERS]},
    _INT32: {"type": "integer", "format": "int32"},
    _SINT32: {"type": "integer", "format": "int32"},
    _SFIXED32: {"type": "integer", "format": "int32"},
    _UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    _FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    # 64-bit integers are strings in the JSON mapping (a number is accepted on input).
    _INT64: {"type": "string", "format": "int64"},
    _SINT64: {"type": "string", "format": "int64"},
    _SFIXED64: {"type": "string", "format": "int64"},
    _UINT64: {"type": "string", "format": "uint64"},
    _FIXED64: {"type": "string", "format": "uint64"},
    _BOOL: {"type": "boolean"},
    _STRING: {"type": "string"},
    _BYTES: {"type": "string", "contentEncoding": "base64"},
}

#: The JSON forms of the well-known types (https://protobuf.dev/programming-guides/json/).
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "A duration in seconds, with up to 9 fractional digits: \"1.5s\".",
    },
    "google.protobuf.FieldMask": {
        "type": "string", "description": "Field paths separated by commas: \"title,author.name\".",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object", "required": ["@type"], "additionalProperties": True,
        "properties": {"@type": {"type": "string", "description": "The type URL of the message."}},
    },
    "google.protobuf.DoubleValue": {"type": ["number", "null"], "format": "double"},
    "google.protobuf.FloatValue": {"type": ["number", "null"], "format": "float"},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "minimum": 0},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}

#: What the gateway answers itself, whatever the service does: status -> description.
GATEWAY_STATUSES = {
    "400": "The request is malformed (JSON, parameters) or the service refused it as invalid "
           "(INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE).",
    "503": "The service is unavailable (UNAVAILABLE); try again later.",
    "504": "The call did not complete within the gateway's deadline (DEADLINE_EXCEEDED).",
}


class OpenApiBuilder:
    """Collects the operations of ``bindings`` and the schemas they reach; see the module."""

    def __init__(self, comments: Mapping[str, str] | None = None, *,
                 statuses: Mapping[str, str] | None = None) -> None:
        self.comments = comments or {}
        self.statuses = {**GATEWAY_STATUSES, **(statuses or {})}
        self.schemas: dict[str, Any] = {}

    # -- the document --------------------------------------------------------------------------

    def document(self, bindings: Iterable[Binding], *, title: str, version: str,
                 description: str = "") -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        operation_ids: dict[str, int] = {}
        tags: dict[str, str] = {}
        for binding in bindings:
            service = binding.method.containing_service
            tags.setdefault(service.name, self._comment(service.full_name))
            base = f"{service.name}_{binding.method.name}"
            operation_ids[base] = operation_ids.get(base, 0) + 1
            number = operation_ids[base]
            operation = self.operation(binding, base if number == 1 else f"{base}{number}")
            path = _VARIABLE.sub(lambda m: "{" + m.group(1) + "}", binding.template)
            paths.setdefault(path, {})[binding.verb.lower()] = operation
        self._status_schema()
        info: dict[str, Any] = {"title": title, "version": version}
        if description:
            info["description"] = description
        return {
            "openapi": OPENAPI_VERSION,
            "info": info,
            "tags": [{"name": name, **({"description": text} if text else {})}
                     for name, text in tags.items()],
            "paths": paths,
            "components": {"schemas": dict(sorted(self.schemas.items()))},
        }

    def operation(self, binding: Binding, operation_id: str) -> dict[str, Any]:
        method = binding.method
        request, reply = method.input_type, method.output_type
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [method.containing_service.name],
        }
        summary, description = _summary(self._comment(method.full_name))
        if summary:
            operation["summary"] = summary
        if description:
            operation["description"] = description
        shapes = {m.group(1): m.group(2) for m in _SHAPED.finditer(binding.template)}
        parameters = [self._path_parameter(request, variable, shapes.get(variable))
                      for variable in binding.variables]
        bound = {variable.split(".")[0] for variable in binding.variables}
        if binding.body != "*":
            taken = bound | ({binding.body.split(".")[0]} if binding.body else set())
            parameters += self._query_parameters(request, taken, "", QUERY_DEPTH,
                                                 set(binding.variables))
        if parameters:
            operation["parameters"] = parameters
        if binding.body:
            operation["requestBody"] = self._request_body(binding, request, bound)
        operation["responses"] = self._responses(binding, reply)
        if method.client_streaming or method.server_streaming:
            kinds = [k for k, on in (("client", method.client_streaming),
                                     ("server", method.server_streaming)) if on]
            operation["x-grpc-streaming"] = kinds
        return operation

    # -- parameters and bodies -----------------------------------------------------------------

    def _path_parameter(self, request: Any, variable: str, shape: str | None) -> dict[str, Any]:
        field = field_of(request, variable)
        schema = self._field_schema(field)
        text = self._comment(field.full_name)
        if shape is not None:
            # {name=shelves/*}: the value is several segments, its slashes sent as they are.
            schema = {**schema, "pattern": "^" + _segments_pattern(shape) + "$"}
            note = f"Path segments of the form {shape}, slashes included (not percent-encoded)."
            text = f"{text}\n\n{note}" if text else note
        parameter = {"name": variable, "in": "path", "required": True, "schema": schema}
        if text:
            parameter["description"] = text
        return parameter

    def _query_parameters(self, message: Any, taken: set[str], prefix: str, depth: int,
                          in_path: set[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for field in message.fields:
            if not prefix and field.name in taken:
                continue
            name = prefix + field.json_name
            if prefix + field.name in in_path:
                continue
            if field.message_type is not None and not _is_map(field) \
                    and field.message_type.full_name not in WELL_KNOWN:
                if field.is_repeated or depth <= 1:
                    continue  # repeated messages and deep nesting cannot be query parameters
                found += self._query_parameters(field.message_type, taken, name + ".",
                                                depth - 1, in_path)
                continue
            if _is_map(field):
                continue  # maps cannot be query parameters
            parameter: dict[str, Any] = {"name": name, "in": "query",
                                         "schema": self._field_schema(field)}
            if field.is_repeated:
                parameter["explode"] = True
                parameter["style"] = "form"
            text = self._comment(field.full_name)
            if text:
                parameter["description"] = text
            found.append(parameter)
        return found

    def _request_body(self, binding: Binding, request: Any, bound: set[str]) -> dict[str, Any]:
        if binding.method.client_streaming:
            schema: dict[str, Any] = {"type": "array", "items": self._ref(request),
                                      "description": "The request stream, one message per item."}
        elif binding.body == "*":
            schema = self._ref(request) if not bound else self._message_schema(request, bound)
        else:
            schema = self._field_schema(field_of(request, binding.body))
        return {"required": binding.method.client_streaming, "content": {JSON: {"schema": schema}}}

    def _responses(self, binding: Binding, reply: Any) -> dict[str, Any]:
        if binding.response_body:
            schema = self._field_schema(field_of(reply, binding.response_body))
        else:
            schema = self._ref(reply)
        status = {"$ref": f"#/components/schemas/{STATUS}"}
        if binding.method.server_streaming:
            # anyOf: a reply's schema does not close its properties, so an error line may
            # match both.
            line = {"anyOf": [schema, {"type": "object", "required": ["error"],
                                       "properties": {"error": status}}]}
            ok = {"description": "A stream of replies, one JSON value per line; an error after "
                                 "the first reply is the last line, {\"error\": Status}.",
                  "content": {NDJSON: {"schema": line}}}
        else:
            ok = {"description": "The reply.", "content": {JSON: {"schema": schema}}}
        responses: dict[str, Any] = {"200": ok}
        statuses = dict(self.statuses)
        if binding.body:
            statuses["413"] = "The body is larger than the gateway accepts."
        for code in sorted(statuses):
            responses[code] = {"description": statuses[code], "content": {JSON: {"schema": status}}}
        responses["default"] = {
            "description": "Any other error of the service: the HTTP status of its gRPC code.",
            "content": {JSON: {"schema": status}},
        }
        return responses

    # -- schemas -------------------------------------------------------------------------------

    def _ref(self, message: Any) -> dict[str, Any]:
        name = message.full_name
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages refer to it
            self.schemas[name] = self._message_schema(message, set())
        return {"$ref": f"#/components/schemas/{name}"}

    def _message_schema(self, message: Any, leave: set[str]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        groups: list[list[str]] = []
        for oneof in message.oneofs:
            if _synthetic(oneof):
                continue
            names = [f.json_name for f in oneof.fields if f.name not in leave]
            if len(names) > 1:
                groups.append(names)
        for field in message.fields:
            if field.name in leave:
                continue
            schema = self._field_schema(field)
            text = self._comment(field.full_name)
            oneof = field.containing_oneof
            if oneof is not None and not _synthetic(oneof):
                names = ", ".join(f.json_name for f in oneof.fields)
                note = f"Part of oneof {oneof.name}: at most one of {names} is set."
                text = f"{text}\n\n{note}" if text else note
            behaviors = _field_behaviors(field)
            if "REQUIRED" in behaviors:
                # Not in the schema's "required": one schema describes requests and replies,
                # and a reply leaves out a field holding its default value (GATEWAY's
                # EMIT_DEFAULTS), so a valid reply would fail it.
                note = ("Required: a request must set it (a reply leaves it out when it holds "
                        "its default value).")
                text = f"{note}\n\n{text}" if text else note
            if "OUTPUT_ONLY" in behaviors:
                schema = {**schema, "readOnly": True}
            if text:
                schema = {**schema, "description": text} if "$ref" not in schema else \
                    {"allOf": [schema], "description": text}
            properties[field.json_name] = schema
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if groups:
            # At most one field of each oneof: no two of them together.
            schema["not"] = {"anyOf": [{"required": [a, b]} for names in groups
                                       for i, a in enumerate(names) for b in names[i + 1:]]}
        text = self._comment(message.full_name)
        if text:
            schema["description"] = text
        return schema

    def _field_schema(self, field: Any) -> dict[str, Any]:
        if _is_map(field):
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single_schema(value)}
        single = self._single_schema(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single_schema(self, field: Any) -> dict[str, Any]:
        if field.type == _MESSAGE:
            return self._ref(field.message_type)
        if field.type == _ENUM:
            return self._enum_ref(field.enum_type)
        return dict(_SCALARS[field.type])

    def _enum_ref(self, enum: Any) -> dict[str, Any]:
        name = enum.full_name
        if name == "google.protobuf.NullValue":
            return {"type": "null"}
        if name not in self.schemas:
            values = [v.name for v in enum.values]
            # By name; a value this proto does not know is written as its number.
            schema: dict[str, Any] = {"anyOf": [{"type": "string", "enum": values},
                                                {"type": "integer", "format": "int32"}]}
            lines = [self._comment(enum.full_name)]
            described = [f"- {v.name}: {self._comment(f'{name}.{v.name}')}" for v in enum.values
                         if self._comment(f"{name}.{v.name}")]
            if described:
                lines.append("\n".join(described))
            text = "\n\n".join(line for line in lines if line)
            if text:
                schema["description"] = text
            self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def _status_schema(self) -> None:
        self.schemas[STATUS] = {
            "type": "object",
            "description": "An error: the JSON mapping of its google.rpc.Status, with the name "
                           "of its gRPC code in status.",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "format": "int32",
                         "description": "The gRPC status code."},
                "status": {"type": "string", "description": "The code's name: NOT_FOUND..."},
                "message": {"type": "string"},
                "details": {"type": "array", "items": WELL_KNOWN["google.protobuf.Any"],
                            "description": "google.rpc error details: BadRequest, ErrorInfo, "
                                           "RetryInfo..."},
            },
        }

    def _comment(self, name: str) -> str:
        return self.comments.get(name, "")


def service_openapi(bindings: Iterable[Binding]) -> dict[str, Any]:
    """The document of the configured service's ``bindings``: titled with its ``SERVICE_NAME``,
    versioned with ``REGISTRY["VERSION"]``, described by the comments of the protos under
    ``<SERVICE_ROOT>/idl`` when they are there (a service installed without them gets none)."""
    from pathlib import Path

    from microframe.conf import dict_setting, settings

    comments: dict[str, str] = {}
    idl = Path(settings.SERVICE_ROOT) / "idl"
    if idl.is_dir():
        from microframe.codegen.comments import proto_comments
        from microframe.codegen.protoc import ProtoError

        try:
            comments = proto_comments(idl)
        except (ProtoError, OSError) as err:
            logger.warning("openapi: the protos' comments could not be read: %s", err)
    statuses: dict[str, str] = {}
    if dict_setting("LIMITER").get("ENABLED"):
        statuses["429"] = "Over the service's rate limit (RESOURCE_EXHAUSTED); see Retry-After."
    if dict_setting("AUTH").get("ENABLED"):
        statuses["401"] = "No valid credentials (UNAUTHENTICATED)."
        statuses["403"] = "The caller may not call this method (PERMISSION_DENIED)."
    version = str(dict_setting("REGISTRY").get("VERSION") or "0")
    builder = OpenApiBuilder(comments, statuses=statuses)
    return builder.document(bindings, title=str(settings.SERVICE_NAME), version=version)


def _summary(comment: str) -> tuple[str, str]:
    """A method's comment as an operation's summary (its first sentence) and description (the
    rest)."""
    if not comment:
        return "", ""
    first = comment.split("\n\n", 1)[0]
    found = re.match(r"(.+?[.!?])(?:\s|$)", first, re.S)
    summary = " ".join((found.group(1) if found else first).split())
    rest = comment[found.end():] if found else comment[len(first):]
    return summary, rest.strip()


def _segments_pattern(shape: str) -> str:
    """The regular expression of a variable's segments (``shelves/*/books/**``)."""
    parts = []
    for segment in shape.split("/"):
        parts.append({"*": "[^/]+", "**": ".*"}.get(segment) or re.escape(segment))
    return "/".join(parts)


def _is_map(field: Any) -> bool:
    kind = field.message_type
    return bool(field.is_repeated and kind is not None and kind.GetOptions().map_entry)


def _synthetic(oneof: Any) -> bool:
    """Whether ``oneof`` is the one protoc makes for a proto3 ``optional`` field."""
    fields = oneof.fields
    return len(fields) == 1 and bool(getattr(fields[0], "has_presence", False)) and \
        oneof.name == f"_{fields[0].name}"


def _field_behaviors(field: Any) -> set[str]:
    """The names of the field's ``google.api.field_behavior`` annotations (REQUIRED...)."""
    try:
        from google.api import field_behavior_pb2
    except ImportError:
        return set()
    options = field.GetOptions()
    if not options.Extensions[field_behavior_pb2.field_behavior]:
        return set()
    return {field_behavior_pb2.FieldBehavior.Name(b)
            for b in options.Extensions[field_behavior_pb2.field_behavior]}
