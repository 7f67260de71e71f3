"""System checks of the limiter battery (tag ``limiter``).

- ``limiter.E001``: ``LIMITER`` is not a dict, has unknown keys, or a bad ``MODE``, ``MAX_WAIT``,
  ``KEY`` or ``METHODS`` entry.
- ``limiter.E002``: the backend does not import, or cannot be built with its ``OPTIONS`` (a
  negative or zero rate, an unknown option).
- ``limiter.E003``: a Redis backend without a ``url``, or without the redis package.

A client's ``LIMIT_QPS``, ``LIMIT_BURST`` and ``LIMIT_WAIT`` are checked with its other options
(``client.E001``).
"""

from __future__ import annotations

from typing import Any

from microframe.conf import settings
from microframe.core.checks.messages import CheckMessage, Error, unknown_keys
from microframe.core.checks.registry import Tags, register
from microframe.core.exceptions import ImproperlyConfigured

HINT = (
    'e.g. LIMITER = {"BACKEND": "microframe.contrib.limiter.backends.TokenBucket", '
    '"OPTIONS": {"rate": 100, "burst": 200}}'
)


def _check_backend(config: Any, where: str) -> list[CheckMessage]:
    if "RedisLimiter" in config.backend:
        if not config.options.get("url"):
            return [Error(f'{where} uses RedisLimiter without a Redis url.',
                          hint='OPTIONS = {"url": "redis://127.0.0.1:6379/0", "rate": 100, '
                          '"burst": 200}',
                          id="limiter.E003")]
        try:
            import redis  # noqa: F401
        except ImportError:
            return [Error(f"{where} uses RedisLimiter, and the redis package is not installed.",
                          hint='pip install "microframe-grpc[redis]"', id="limiter.E003")]
    try:
        factory = config.factory()
    except ImproperlyConfigured as err:
        return [Error(str(err), hint="Check the dotted path of BACKEND.", id="limiter.E002")]
    try:
        factory(**config.options)
    except (TypeError, ValueError) as err:
        return [Error(f"{where}: the backend cannot be built with its OPTIONS: {err}",
                      hint=HINT, id="limiter.E002")]
    return []


@register(Tags.limiter, Tags.settings)
def check_limiter_settings(**kwargs: Any) -> list[CheckMessage]:
    from microframe.contrib.limiter.settings import KNOWN_KEYS, method_config

    configured = getattr(settings, "LIMITER", None)
    if not isinstance(configured, dict):
        return [Error(f"LIMITER must be a dict, not {type(configured).__name__}.",
                      hint=HINT, id="limiter.E001")]
    errors: list[CheckMessage] = unknown_keys("LIMITER", configured, KNOWN_KEYS, "limiter.E001")
    if not isinstance(configured.get("ENABLED", True), bool):
        errors.append(Error(f'LIMITER["ENABLED"] must be True or False, not '
                            f'{configured["ENABLED"]!r}.', id="limiter.E001"))
    methods = configured.get("METHODS") or {}
    if not isinstance(methods, dict):
        return [*errors, Error(
            'LIMITER["METHODS"] must be a dict of "/pkg.Service/Method" to a dict or None.',
            id="limiter.E001",
        )]
    for name in [None, *methods]:
        where = "LIMITER" if name is None else f'LIMITER["METHODS"][{name!r}]'
        path = isinstance(name, str) and name.count("/") == 2 and name.startswith("/")
        if name is not None and not path:
            errors.append(Error(f"{where}: {name!r} is not a method path.",
                                hint='"/package.Service/Method"', id="limiter.E001"))
            continue
        try:
            config = method_config(name)
        except ImproperlyConfigured as err:
            errors.append(Error(str(err), hint=HINT, id="limiter.E001"))
            continue
        if config is not None and (name is None or config.own):
            errors.extend(_check_backend(config, where))
    return errors
