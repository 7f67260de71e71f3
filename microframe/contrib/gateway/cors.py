"""Cross-origin requests to the gateway (the Fetch standard's CORS protocol).

``GATEWAY["CORS"]`` says which origins a browser may call the gateway from; nothing is allowed
by default (no ``Access-Control-*`` header is ever sent), so a page on another site cannot
read an answer. For an allowed origin:

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
  204 with the methods and headers allowed and how long the browser may cache that
  (``MAX_AGE``); one asking for a method or a header that is not allowed, or from an origin
  that is not, is answered 403 without them;
- every other answer to it gets ``Access-Control-Allow-Origin`` (the origin itself, so that
  ``Vary: Origin`` keeps caches apart; ``*`` when every origin is allowed without credentials),
  the ``EXPOSE_HEADERS`` a script may read (gRPC-Web's ``grpc-status`` and ``grpc-message``,
  ``Retry-After``...) and, with ``ALLOW_CREDENTIALS``, ``Access-Control-Allow-Credentials``.

Written here, small, because the WSGI middlewares on PyPI (``wsgicors``...) are unmaintained
and the gateway answers its own preflights before routing anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Headers a browser sends without asking (the Fetch standard's CORS-safelisted request
#: headers, and those it sets itself): never refused in a preflight.
SAFELISTED = frozenset({"accept", "accept-language", "content-language", "content-type"})


class Cors:
    """The CORS policy of ``options`` (GATEWAY["CORS"]); see the module."""

    def __init__(self, options: Mapping[str, Any] | None) -> None:
        from microframe.conf import global_settings

        config = {**global_settings.GATEWAY["CORS"], **(options or {})}
        origins = [str(o).rstrip("/") for o in config["ALLOW_ORIGINS"]]
        self.any_origin = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")
        self.methods = [str(m).upper() for m in config["ALLOW_METHODS"]]
        allowed = frozenset(str(h).lower() for h in config["ALLOW_HEADERS"])
        self.allowed_headers = allowed | SAFELISTED
        self.credentials = bool(config["ALLOW_CREDENTIALS"])
        self.max_age = int(config["MAX_AGE"])
        self.expose = ", ".join(str(h).lower() for h in config["EXPOSE_HEADERS"])
        self.enabled = self.any_origin or bool(self.origins)
        # Whether answers differ by Origin (all but "*" without credentials): then every answer
        # says so, allowed or not, so that a shared cache keeps them apart.
        self.varies = self.enabled and not (self.any_origin and not self.credentials)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin and not self.credentials:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def answer_headers(self, environ: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The headers an answer to ``environ``'s request gets (none without an allowed Origin)."""
        origin = environ.get("HTTP_ORIGIN")
        if not self.enabled or not origin or not self.allows(origin):
            return [("Vary", "Origin")] if self.varies else []
        headers = self._origin_headers(origin)
        if self.expose:
            headers.append(("Access-Control-Expose-Headers", self.expose))
        return headers

    def preflight(self, environ: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], str]:
        """Answer a preflight: (HTTP status, headers, why it is refused or "")."""
        origin = str(environ.get("HTTP_ORIGIN") or "")
        method = str(environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD") or "").upper()
        asked = [h.strip().lower() for h in
                 str(environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS") or "").split(",")
                 if h.strip()]
        vary = [("Vary", "Origin")] if self.varies else []
        if not self.enabled or not self.allows(origin):
            return 403, vary, f"CORS: the origin {origin!r} is not allowed"
        if method not in self.methods:
            return 403, vary, f"CORS: the method {method} is not allowed"
        refused = [h for h in asked if h not in self.allowed_headers]
        if refused:
            return 403, vary, f"CORS: the header(s) {', '.join(refused)} are not allowed"
        headers = self._origin_headers(origin)
        headers += [
            ("Access-Control-Allow-Methods", ", ".join(self.methods)),
            ("Access-Control-Max-Age", str(self.max_age)),
        ]
        if asked:
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked)))
        if not any(name == "Vary" for name, _ in headers):
            headers.append(("Vary", "Origin"))
        return 204, headers, ""


def is_preflight(environ: Mapping[str, Any]) -> bool:
    """Whether ``environ`` is a CORS preflight (not any OPTIONS request)."""
    return (environ.get("REQUEST_METHOD") == "OPTIONS" and "HTTP_ORIGIN" in environ
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ)
