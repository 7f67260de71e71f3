"""Protobuf messages to and from JSON (the proto3 JSON mapping), for ``call`` and the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def parse_requests(value: Any, request_class: Any, streaming: bool) -> list[Any]:
    """The decoded JSON ``value`` as request messages: one object, or a list of objects when
    ``streaming``; raise ValueError saying what is wrong."""
    from google.protobuf import json_format

    if isinstance(value, list) and not streaming:
        raise ValueError("This method takes one request: give a JSON object, not an array.")
    items = value if isinstance(value, list) else [value]
    messages = []
    for i, item in enumerate(items):
        where = f"request {i + 1}" if len(items) > 1 else "the request"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not a JSON object: {json.dumps(item)[:80]}")
        try:
            messages.append(json_format.ParseDict(item, request_class()))
        except json_format.ParseError as err:
            kind = request_class.DESCRIPTOR.full_name
            raise ValueError(f"{where} is not a valid {kind}: {err}") from None
    return messages


def to_json(message: Any, *, indent: int | None = None, emit_defaults: bool = False) -> str:
    """``message`` in the proto3 JSON mapping (lowerCamelCase names)."""
    from google.protobuf import json_format

    return json_format.MessageToJson(
        message, indent=indent, always_print_fields_with_no_presence=emit_defaults
    )


def message_class(descriptor: Any) -> Any:
    """The message class of ``descriptor`` (made once per descriptor by protobuf)."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def within_depth(value: Any, limit: int) -> bool:
    """Whether the JSON ``value`` nests at most ``limit`` arrays and objects deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True
