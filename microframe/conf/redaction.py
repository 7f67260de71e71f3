"""Hide secrets wherever settings are shown (``diffsettings``, check messages, logs).

As Django's ``SafeExceptionReporterFilter`` does: the value of a setting or a key whose name
looks like a secret's (``PASSWORD``, ``TOKEN``, ``SECRET``, ``API_KEY``, ``CREDENTIALS``...)
is replaced by :data:`REDACTED`, in nested dicts and lists too, the value of a ``(name,
value)`` pair named so (metadata: ``("authorization", "Bearer ...")``), and the password of a
URL (``redis://:pw@host``) wherever it appears.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "********"

#: Names of secrets: whole words of a setting or key name (``_``, ``-``, ``.`` or camelCase
#: separate words), in any case, singular or plural.
SECRET_NAME = re.compile(
    r"(^|[_\-.])(PASS(WD|WORD|PHRASE)?|SECRET|TOKEN|TOKEN_HASH(ES)?|API[_-]?KEY|PRIVATE[_-]?KEY|"
    r"CREDENTIAL|AUTH[_-]?TOKEN|"
    r"SIGNATURE|AUTHORIZATION|COOKIE)S?($|[_\-.])",
    re.IGNORECASE,
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
#: The user information of a URL (``user:password@``, or a token as the user): up to the
#: authority's last ``@``.
URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")
#: A secret in a query string (``?password=...``, ``&token=...``).
QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:pass(?:wd|word)?|secret|token|api_?key|access_token|auth)=)[^&;#\s]*",
    re.IGNORECASE,
)


def is_secret_name(name: Any) -> bool:
    """Whether a setting or key named ``name`` holds a secret."""
    return isinstance(name, str) and bool(SECRET_NAME.search(_CAMEL.sub("_", name)))


def _redact_url(match: re.Match[str]) -> str:
    user, sep, _ = match["userinfo"].partition(":")
    if sep:  # user:password@: the user stays
        return f"{match['scheme']}{user}:{REDACTED}@"
    return f"{match['scheme']}{REDACTED}@"  # a token in the user's place


def redact(value: Any, name: Any = None) -> Any:
    """Return ``value`` with its secrets replaced (``name``: the setting or key holding it)."""
    if name is not None and is_secret_name(name):
        return REDACTED if value not in (None, "", {}, [], ()) else value
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and is_secret_name(value[0]):
            # A (name, value) pair: metadata (("authorization", "Bearer ..."), ...), headers.
            items = [value[0], redact(value[1], value[0])]
        else:
            items = [redact(v) for v in value]
        plain_tuple = isinstance(value, tuple) and not hasattr(value, "_fields")
        return type(value)(items) if plain_tuple else items
    if isinstance(value, str) and "://" in value:
        value = URL_USERINFO.sub(_redact_url, value)
        return QUERY_SECRET.sub(rf"\g<key>{REDACTED}", value)
    return value
