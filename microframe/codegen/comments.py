"""The comments of a service's protos, by the full name of what they describe.

The ``_pb2`` modules protoc writes for Python keep no comments (their descriptors carry no
``source_code_info``), so they are read from the ``.proto`` files themselves: protoc compiles
them once more with ``--include_source_info`` into a descriptor set, whose locations are mapped
back to the messages, fields, enums, enum values, services and methods they belong to. The
OpenAPI document (:mod:`microframe.contrib.gateway.openapi`) uses them as descriptions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from microframe.codegen.protoc import protos_of, run_protoc

# Field numbers of descriptor.proto along a location's path.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6  # in FileDescriptorProto
_FIELD, _NESTED, _NESTED_ENUM = 2, 3, 4  # in DescriptorProto
_VALUE = 2  # in EnumDescriptorProto
_METHOD = 2  # in ServiceDescriptorProto

Named = Iterable[tuple[tuple[int, ...], str]]


def proto_comments(idl: Path) -> dict[str, str]:
    """Every leading (else trailing) comment of the protos under ``idl``, by full name
    (``orders.v1.Order``, ``orders.v1.Order.id``, ``orders.v1.Orders.Get``...), each stripped
    of its common indentation; ProtoError when the protos do not compile."""
    from google.protobuf import descriptor_pb2

    idl = idl.resolve()
    protos = protos_of(idl)
    with tempfile.TemporaryDirectory(prefix="microframe-comments-") as tmp:
        out = Path(tmp) / "set.pb"
        run_protoc(idl, protos, f"--descriptor_set_out={out}", "--include_source_info")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    found: dict[str, str] = {}
    for file in files:
        names = dict(_names(file))
        for location in file.source_code_info.location:
            text = location.leading_comments or location.trailing_comments
            name = names.get(tuple(location.path))
            if name is not None and text.strip():
                found[name] = _clean(text)
    return found


def _names(file: Any) -> Named:
    """(location path, full name) of everything a comment can describe in ``file``."""
    prefix = f"{file.package}." if file.package else ""
    for i, message in enumerate(file.message_type):
        yield from _message_names(message, (_MESSAGE, i), prefix)
    for i, enum in enumerate(file.enum_type):
        yield from _enum_names(enum, (_ENUM, i), prefix)
    for i, service in enumerate(file.service):
        name = prefix + service.name
        yield (_SERVICE, i), name
        for j, method in enumerate(service.method):
            yield (_SERVICE, i, _METHOD, j), f"{name}.{method.name}"


def _message_names(message: Any, path: tuple[int, ...], prefix: str) -> Named:
    name = prefix + message.name
    yield path, name
    for j, field in enumerate(message.field):
        yield (*path, _FIELD, j), f"{name}.{field.name}"
    for j, nested in enumerate(message.nested_type):
        yield from _message_names(nested, (*path, _NESTED, j), f"{name}.")
    for j, enum in enumerate(message.enum_type):
        yield from _enum_names(enum, (*path, _NESTED_ENUM, j), f"{name}.")


def _enum_names(enum: Any, path: tuple[int, ...], prefix: str) -> Named:
    name = prefix + enum.name
    yield path, name
    for j, value in enumerate(enum.value):
        # Named under their enum (protobuf scopes them beside it), so that values of two
        # enums of one package cannot collide here.
        yield (*path, _VALUE, j), f"{name}.{value.name}"


def _clean(text: str) -> str:
    """A comment's lines without the indentation they share, and without blank edges."""
    import textwrap

    return textwrap.dedent(text).strip()
