"""Names derived from proto names, the same everywhere (genproto, the checks, the template)."""

from __future__ import annotations

import re

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake(name: str) -> str:
    """``SayHello`` -> ``say_hello``, ``GetHTTPStatus`` -> ``get_http_status``: the controller
    function of an RPC, the controller module of a service."""
    return _WORD_BOUNDARY.sub("_", name).lower()
