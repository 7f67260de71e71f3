"""``AuthMiddleware``: who is calling, and may they call this method.

Credentials, in this order:

1. a bearer token, ``authorization: Bearer <token>`` metadata, checked against ``AUTH["TOKENS"]``
   (identity -> token) and ``AUTH["TOKEN_HASHES"]`` (identity -> SHA-256 hex of the token);
2. under mTLS (``GRPC["TLS"]["CLIENT_CA"]``) and with ``AUTH["MTLS"]``, the client
   certificate's identity: its common name, or a subject alternative name, listed in
   ``AUTH["MTLS_IDENTITIES"]`` (common name or SAN -> identity; ``"*"`` accepts every
   certificate the CA signed, under its common name).

The token presented is hashed (SHA-256) and the digest compared with every known digest with
:func:`hmac.compare_digest`, all of them every time: the time taken does not depend on how
much of a token was right, nor on which identity matched. A token is never logged: refusals
log the method, the peer and why, not what was presented.

``AUTH["PERMISSIONS"]`` maps ``"/pkg.Service/Method"`` (or ``"/pkg.Service/*"``) to the
identities allowed; a method not listed admits every authenticated identity. Methods in
``AUTH["EXEMPT"]`` (or all of a service's, ``"/pkg.Service/*"``) are served without credentials
(the health and reflection services are never behind the chain).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from microframe.conf import global_settings
from microframe.core.context import RequestContext
from microframe.core.exceptions import MiddlewareNotUsed, PermissionDenied, Unauthenticated
from microframe.core.middleware import Handler
from microframe.core.router import Route

logger = logging.getLogger("microframe.auth")

BEARER = "bearer "


class Credentials:
    """The identities the settings know, built once (``AUTH`` read at start-up)."""

    def __init__(self, config: dict[str, Any]) -> None:
        digests: list[tuple[bytes, str]] = []
        for identity, token in (config.get("TOKENS") or {}).items():
            digests.append((hashlib.sha256(str(token).encode()).digest(), str(identity)))
        for identity, hexdigest in (config.get("TOKEN_HASHES") or {}).items():
            digests.append((bytes.fromhex(str(hexdigest)), str(identity)))
        self.digests = digests
        # AUTH replaced whole by override_settings, or a dict of a test's, may lack MTLS.
        self.mtls = bool(config.get("MTLS", global_settings.AUTH["MTLS"]))
        identities = config.get("MTLS_IDENTITIES") or {}
        self.mtls_identities = {str(k): str(v) for k, v in identities.items()}

    def token_identity(self, token: str) -> str | None:
        """The identity of ``token``, comparing its digest with every known one."""
        presented = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for digest, identity in self.digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        return found

    def certificate_identity(self, auth_context: dict[str, list[bytes]]) -> str | None:
        """The identity of the client certificate the TLS handshake verified, if any."""
        if not self.mtls or not self.mtls_identities:
            return None
        names = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", ())]
        alternative = auth_context.get("x509_subject_alternative_name", ())
        sans = [n.decode(errors="replace") for n in alternative]
        for name in (*names, *sans):
            if name in self.mtls_identities:
                return self.mtls_identities[name]
        if "*" in self.mtls_identities and names:
            return names[0]
        return None


def permissions_for(config: dict[str, Any], full_method: str) -> frozenset[str] | None:
    """The identities allowed to call ``full_method`` (None: every authenticated one)."""
    permissions = config.get("PERMISSIONS") or {}
    service = full_method.rsplit("/", 1)[0]
    allowed = permissions.get(full_method, permissions.get(f"{service}/*"))
    return None if allowed is None else frozenset(str(i) for i in allowed)


def is_exempt(config: dict[str, Any], full_method: str) -> bool:
    """Whether ``AUTH["EXEMPT"]`` lists ``full_method`` or its service (``/pkg.Service/*``)."""
    exempt = config.get("EXEMPT") or ()
    return full_method in exempt or f"{full_method.rsplit('/', 1)[0]}/*" in exempt


_credentials: tuple[dict[str, Any], Credentials] | None = None


def _shared_credentials(config: dict[str, Any]) -> Credentials:
    # Built once for the AUTH dict in force, shared by every method's chain; another AUTH dict
    # (override_settings in a test) builds anew. Keeping the dict itself, not its id, means a
    # new dict can never be taken for a freed one.
    global _credentials
    if _credentials is None or _credentials[0] is not config:
        _credentials = (config, Credentials(config))
    return _credentials[1]


class AuthMiddleware:
    """Refuse the calls without valid credentials, and the identities the method does not allow."""

    def __init__(self, next: Handler, route: Route | None = None) -> None:
        from microframe.conf import settings

        config = getattr(settings, "AUTH", None) or {}
        full_method = route.full_method if route is not None else ""
        if not config.get("ENABLED") or is_exempt(config, full_method):
            raise MiddlewareNotUsed
        self.next = next
        self.full_method = full_method
        self.credentials = _shared_credentials(config)
        self.allowed = permissions_for(config, full_method)

    def identify(self, ctx: RequestContext) -> str:
        """The caller's identity; raise Unauthenticated when the credentials do not name one."""
        header = ctx.metadata.get("authorization")
        if header is not None:
            if header[: len(BEARER)].lower() != BEARER:
                self._refuse(ctx, "the authorization metadata is not a bearer token")
                raise Unauthenticated("authorization must be a bearer token")
            identity = self.credentials.token_identity(header[len(BEARER):].strip())
            if identity is None:
                self._refuse(ctx, "unknown bearer token")
                raise Unauthenticated("invalid credentials")
            return identity
        auth_context = ctx.grpc.auth_context()
        identity = self.credentials.certificate_identity(auth_context) if auth_context else None
        if identity is None:
            self._refuse(ctx, "no credentials")
            raise Unauthenticated("credentials required: a bearer token or a client certificate")
        return identity

    def _refuse(self, ctx: RequestContext, why: str) -> None:
        logger.warning("auth: %s refused for %s: %s", self.full_method, ctx.peer, why)

    def __call__(self, ctx: RequestContext, request: Any) -> Any:
        identity = self.identify(ctx)
        if self.allowed is not None and identity not in self.allowed:
            logger.warning("auth: %s denied to %s (%s)", self.full_method, identity, ctx.peer)
            raise PermissionDenied(f"{identity} may not call {self.full_method}")
        ctx.identity = identity
        return self.next(ctx, request)
