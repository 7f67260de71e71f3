"""``LIMITER``, resolved per method.

Keys (defaults in ``global_settings.LIMITER``):

- ``ENABLED``: False takes the middleware out of every chain;
- ``BACKEND``: the dotted path of a backend class (:mod:`microframe.contrib.limiter.backends`,
  or ``microframe.contrib.limiter.redis.RedisLimiter``), ``OPTIONS`` its keyword arguments;
- ``MODE``: ``"reject"`` (over the limit: RESOURCE_EXHAUSTED at once) or ``"wait"`` (wait for a
  permit up to ``MAX_WAIT`` seconds, never past the call's deadline);
- ``KEY``: what one limit counts: ``"service"`` (every method together; the default),
  ``"method"`` (each method on its own), ``"peer"`` (each calling host), or
  ``"metadata:<key>"`` (each value of that request metadata: a tenant, a user id);
- ``METHODS``: ``{"/pkg.Service/Method": overrides}``, where the overrides are any of the keys
  above (a method with its own ``BACKEND`` or ``OPTIONS`` gets its own limit), or ``None`` to
  exempt the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = global_settings.LIMITER
KNOWN_KEYS = set(DEFAULTS)
METHOD_KEYS = {"BACKEND", "OPTIONS", "MODE", "MAX_WAIT", "KEY"}
MODES = ("reject", "wait")


@dataclass(frozen=True)
class LimitConfig:
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    mode: str = DEFAULTS["MODE"]
    max_wait: float = DEFAULTS["MAX_WAIT"]
    key: str = DEFAULTS["KEY"]
    own: bool = False  # a method's own BACKEND/OPTIONS: not the service's shared limit

    def factory(self) -> Any:
        from microframe.utils.module_loading import import_string

        try:
            return import_string(self.backend)
        except ImportError as err:
            raise ImproperlyConfigured(
                f"LIMITER backend {self.backend!r} cannot be imported: {err}"
            ) from err


def limiter_options() -> dict[str, Any]:
    from microframe.conf import settings

    configured = getattr(settings, "LIMITER", None)
    if not isinstance(configured, dict):
        raise ImproperlyConfigured(f"LIMITER must be a dict, not {type(configured).__name__}.")
    return {**DEFAULTS, **configured}


def validate(config: LimitConfig, where: str) -> LimitConfig:
    if config.mode not in MODES:
        raise ImproperlyConfigured(
            f'{where}["MODE"] must be "reject" or "wait", not {config.mode!r}.'
        )
    max_wait = config.max_wait
    number = isinstance(max_wait, int | float) and not isinstance(max_wait, bool)
    if not number or max_wait < 0 or math.isnan(max_wait):
        raise ImproperlyConfigured(
            f'{where}["MAX_WAIT"] must be a number of seconds >= 0, not {max_wait!r}.'
        )
    key = config.key
    by_metadata = isinstance(key, str) and key.startswith("metadata:") and len(key) > 9
    if not isinstance(key, str) or not (key in ("service", "method", "peer") or by_metadata):
        raise ImproperlyConfigured(
            f'{where}["KEY"] must be "service", "method", "peer" or "metadata:<key>", not {key!r}.'
        )
    if not isinstance(config.options, dict):
        raise ImproperlyConfigured(f'{where}["OPTIONS"] must be a dict of keyword arguments.')
    return config


def method_config(full_method: str | None) -> LimitConfig | None:
    """The limit of ``full_method`` (None: the method is exempt, or the limiter is off)."""
    options = limiter_options()
    if not options["ENABLED"]:
        return None
    base = LimitConfig(
        backend=options["BACKEND"],
        options=dict(options.get("OPTIONS") or {}),
        mode=options["MODE"],
        max_wait=options["MAX_WAIT"],
        key=options["KEY"],
    )
    methods = options.get("METHODS") or {}
    if full_method is not None and full_method in methods:
        override = methods[full_method]
        if override is None:
            return None
        if not isinstance(override, dict):
            raise ImproperlyConfigured(
                f'LIMITER["METHODS"][{full_method!r}] must be a dict or None.'
            )
        unknown = set(override) - METHOD_KEYS
        if unknown:
            raise ImproperlyConfigured(
                f'LIMITER["METHODS"][{full_method!r}] has unknown keys: {sorted(unknown)}.'
            )
        own = "BACKEND" in override or "OPTIONS" in override
        base = LimitConfig(
            backend=override.get("BACKEND", base.backend),
            options=dict(override["OPTIONS"]) if "OPTIONS" in override else base.options,
            mode=override.get("MODE", base.mode),
            max_wait=override.get("MAX_WAIT", base.max_wait),
            key=override.get("KEY", base.key),
            own=own,
        )
        return validate(base, f'LIMITER["METHODS"][{full_method!r}]')
    return validate(base, "LIMITER")
