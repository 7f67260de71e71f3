"""Hide secrets wherever settings are shown (``diffsettings``, check messages, logs).

As Django's ``SafeExceptionReporterFilter`` does: the value of a setting or a key whose name
looks like a secret's (``PASSWORD``, ``TOKEN``, ``SECRET``, ``API_KEY``, ``CREDENTIALS``...)
is replaced by :data:`REDACTED`, in nested dicts and lists too, and the password of a URL
(``redis://:pw@host``) wherever it appears.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "********"

#: Names of secrets: whole words of a setting or key name, in any case.
SECRET_NAME = re.compile(
    r"(^|[_\-.])(PASS|PASSWD|PASSWORD|SECRETS?|TOKENS?|TOKEN_HASHES|API_?KEY|PRIVATE_?KEY|CREDENTIALS?|"
    r"SIGNATURE|AUTHORIZATION|COOKIE|AUTH_TOKEN)($|[_\-.])",
    re.IGNORECASE,
)
#: user:password@ in a URL.
URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")


def is_secret_name(name: Any) -> bool:
    """Whether a setting or key named ``name`` holds a secret."""
    return isinstance(name, str) and bool(SECRET_NAME.search(name))


def redact(value: Any, name: Any = None) -> Any:
    """Return ``value`` with its secrets replaced (``name``: the setting or key holding it)."""
    if name is not None and is_secret_name(name):
        return REDACTED if value not in (None, "", {}, [], ()) else value
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [redact(v) for v in value]
        return type(value)(items) if isinstance(value, tuple) and not hasattr(value, "_fields") else items
    if isinstance(value, str) and "://" in value:
        return URL_PASSWORD.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
    return value
