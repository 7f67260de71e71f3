"""System checks of the auth battery (tag ``auth``; ``security`` with ``--deploy``).

- ``auth.E001``: ``AUTH`` is not a dict, has unknown keys, or a bad entry: a token that is not
  a non-empty string, a token hash that is not 64 hex digits, ``PERMISSIONS`` or ``EXEMPT``
  naming something that is not a ``/pkg.Service/Method`` path.
- ``auth.E002``: ``AUTH["ENABLED"]`` is true and ``MIDDLEWARE`` has no ``AuthMiddleware`` (a
  ``MIDDLEWARE`` list replaces the default whole): every call would be served unauthenticated.
- ``auth.W002``: a ``PERMISSIONS`` or ``EXEMPT`` entry names no method the router serves (a
  misspelt method would leave the real one open to every identity).
- ``auth.W001`` (``--deploy``): auth is on and bearer tokens travel over plaintext gRPC (no
  ``GRPC["TLS"]``): anyone on the path can read and replay them.
"""

from __future__ import annotations

import re
from typing import Any

from microframe.conf import global_settings, settings
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register

HINT = 'e.g. AUTH = {"ENABLED": True, "TOKENS": {"billing": os.environ["BILLING_TOKEN"]}}'
_PATH = re.compile(r"^/[\w.]+/(\w+|\*)$")


def _error(message: str) -> Error:
    return Error(message, hint=HINT, id="auth.E001")


@register(Tags.auth, Tags.settings)
def check_auth_setting(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "AUTH", None)
    if not isinstance(config, dict):
        return [_error(f"AUTH must be a dict, not {type(config).__name__}.")]
    errors = unknown_keys("AUTH", config, frozenset(global_settings.AUTH), "auth.E001")
    tokens = config.get("TOKENS") or {}
    if not isinstance(tokens, dict) or not all(isinstance(t, str) and t for t in tokens.values()):
        errors.append(_error('AUTH["TOKENS"] must map identities to non-empty token strings.'))
    hashes = config.get("TOKEN_HASHES") or {}
    if not isinstance(hashes, dict) or not all(
        isinstance(h, str) and re.fullmatch(r"[0-9a-fA-F]{64}", h) for h in hashes.values()
    ):
        errors.append(_error(
            'AUTH["TOKEN_HASHES"] must map identities to SHA-256 hex digests (64 hex digits).'
        ))
    if not isinstance(config.get("MTLS_IDENTITIES") or {}, dict):
        errors.append(_error('AUTH["MTLS_IDENTITIES"] must map certificate names to identities.'))
    permissions = config.get("PERMISSIONS") or {}
    if not isinstance(permissions, dict) or not all(
        isinstance(k, str) and _PATH.match(k) and isinstance(v, list | tuple | set | frozenset)
        for k, v in permissions.items()
    ):
        errors.append(_error(
            'AUTH["PERMISSIONS"] must map "/pkg.Service/Method" (or "/pkg.Service/*") to lists '
            "of identities."
        ))
    exempt = config.get("EXEMPT") or []
    paths = isinstance(exempt, list | tuple) and all(
        isinstance(m, str) and _PATH.match(m) for m in exempt
    )
    if not paths:
        errors.append(_error('AUTH["EXEMPT"] must list "/pkg.Service/Method" paths.'))
    return errors


@register(Tags.security, deploy=True)
def check_tokens_over_plaintext(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "AUTH", None) or {}
    if not isinstance(config, dict) or not config.get("ENABLED"):
        return []
    if (config.get("TOKENS") or config.get("TOKEN_HASHES")) and not settings.GRPC.get("TLS"):
        return [Warning(
            "Bearer tokens are accepted over plaintext gRPC: anyone on the path can read and "
            "replay them.",
            hint='Serve TLS (GRPC["TLS"] = {"CERT": ..., "KEY": ...}) or terminate it in front of '
            "the service.",
            id="auth.W001",
        )]
    return []


AUTH_MIDDLEWARE = "microframe.contrib.auth.middleware.AuthMiddleware"


@register(Tags.auth, Tags.middleware)
def check_auth_in_middleware(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "AUTH", None)
    if not isinstance(config, dict) or not config.get("ENABLED"):
        return []
    from microframe.contrib.auth.middleware import AuthMiddleware

    middleware = getattr(settings, "MIDDLEWARE", None) or []
    if any(entry == AUTH_MIDDLEWARE or entry is AuthMiddleware for entry in middleware):
        return []
    return [Error(
        'AUTH["ENABLED"] is true but MIDDLEWARE has no AuthMiddleware: every call is served '
        "unauthenticated.",
        hint=f'Add "{AUTH_MIDDLEWARE}" to MIDDLEWARE (after the access log, before the limiter).',
        id="auth.E002",
    )]


@register(Tags.auth, Tags.router)
def check_auth_methods(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "AUTH", None)
    if not isinstance(config, dict) or not config.get("ENABLED"):
        return []
    from microframe.core.router import load_routes

    try:
        routes = load_routes(getattr(settings, "ROOT_ROUTER", None))
    except Exception:  # noqa: BLE001 - a broken router is microframe.E004's or E010's to report
        return []
    methods = {route.full_method for route in routes}
    services = {f"/{route.service}/*" for route in routes}
    named = [*(config.get("PERMISSIONS") or {}), *(config.get("EXEMPT") or [])]
    unknown = sorted({str(n) for n in named if n not in methods and n not in services})
    if not unknown:
        return []
    served = ", ".join(sorted(methods)[:5]) + (" ..." if len(methods) > 5 else "")
    return [Warning(
        f'AUTH names methods the router does not serve: {", ".join(unknown)}.',
        hint="Write them as /package.Service/Method (or /package.Service/*), as the router serves "
        f"them: {served}",
        id="auth.W002",
    )]
