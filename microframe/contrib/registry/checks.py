"""System checks of the registry battery (tag ``registry``).

- ``registry.E001``: ``REGISTRY`` or its ``BACKEND`` is not usable (not a dict, not a dotted
  path, does not import).
- ``registry.E002``: the backend cannot be built with ``REGISTRY["OPTIONS"]``.
- ``registry.E003``: the instance to register is invalid (``ADVERTISE``, ``INSTANCE_ID``,
  ``WEIGHT``, ``METADATA``).
- ``registry.W001`` (``--deploy``): the advertised address is a loopback address, which other
  hosts cannot dial.
- ``registry.W002`` (``--deploy``): the registry cannot be reached.
- ``registry.I001`` (``--deploy``): what the registry holds (services and instance counts).
"""

from __future__ import annotations

import asyncio
from typing import Any

from microframe.conf import dict_setting, global_settings, settings
from microframe.core.checks.messages import CheckMessage, Error, Info, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register
from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.timeouts import with_timeout

KNOWN_KEYS = set(global_settings.REGISTRY)
DEPLOY_TIMEOUT = 5.0


def _config() -> tuple[dict[str, Any] | None, list[CheckMessage]]:
    """``REGISTRY`` completed with its defaults, or the error saying it is no dict."""
    config = dict_setting("REGISTRY")
    if not isinstance(config, dict):
        return None, [Error(
            f"REGISTRY must be a dict, not {type(config).__name__}.",
            hint='REGISTRY = {"BACKEND": "microframe.contrib.registry.file.FileRegistry", '
            '"OPTIONS": {}}',
            id="registry.E001",
        )]
    return config, []


def _planned_instance() -> Any:
    """The instance runserver would register, with placeholders for what other checks report
    (a broken SERVICE_NAME or GRPC HOST/PORT is microframe.E001's, not the registry's)."""
    from microframe.contrib.registry.registration import instance_from_settings

    grpc = settings.GRPC if isinstance(getattr(settings, "GRPC", None), dict) else {}
    host = grpc.get("HOST")
    port = grpc.get("PORT")
    name = getattr(settings, "SERVICE_NAME", None)
    defaults: dict[str, Any] = global_settings.GRPC
    return instance_from_settings(
        host if isinstance(host, str) and host else defaults["HOST"],
        port
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port <= 65535
        else defaults["PORT"],
        name if isinstance(name, str) and name and "/" not in name else "service",
    )


@register(Tags.registry, Tags.settings)
def check_registry_settings(**kwargs: Any) -> list[CheckMessage]:
    config, errors = _config()
    if config is None:
        return errors
    from microframe.discovery import build_registry
    from microframe.utils.module_loading import import_string

    backend = config.get("BACKEND")
    if not isinstance(backend, str) or "." not in backend:
        return [Error(
            f'REGISTRY["BACKEND"] must be a dotted path, not {backend!r}.',
            hint="e.g. microframe.contrib.registry.etcd.EtcdRegistry",
            id="registry.E001",
        )]
    try:
        import_string(backend)
    except ImportError as err:
        etcd_hint = "Install the etcd extra: pip install 'microframe-grpc[etcd]'."
        hint = etcd_hint if "etcd" in backend else (
            "Check the spelling of the dotted path."
        )
        return [Error(f'REGISTRY["BACKEND"] {backend!r} cannot be imported: {err}',
                      hint=hint, id="registry.E001")]
    options = config.get("OPTIONS") or {}
    if not isinstance(options, dict):
        errors.append(Error(
            'REGISTRY["OPTIONS"] must be a dict of keyword arguments, '
            f"not {type(options).__name__}.",
            id="registry.E002",
        ))
    else:
        try:
            build_registry(backend, options)
        except (ImproperlyConfigured, TypeError, ValueError) as err:
            errors.append(Error(
                f"The registry cannot be built: {err}",
                hint=f"See the options {backend.rsplit('.', 1)[-1]} accepts in the registry docs.",
                id="registry.E002",
            ))
    errors.extend(unknown_keys("REGISTRY", config, KNOWN_KEYS, "registry.E003"))
    try:
        _planned_instance()
    except (ImproperlyConfigured, TypeError, ValueError) as err:
        errors.append(Error(
            f"The instance to register is invalid: {err}",
            hint='Check REGISTRY["ADVERTISE"] ("host:port" or "host"), INSTANCE_ID (no "/"), '
            "WEIGHT (an int >= 0) and METADATA (a dict).",
            id="registry.E003",
        ))
    return errors


@register(Tags.registry, deploy=True)
def check_registry_deployment(**kwargs: Any) -> list[CheckMessage]:
    config, errors = _config()
    if config is None or check_registry_settings():
        return errors  # the settings check reports those
    from microframe.contrib.registry.registration import is_loopback
    from microframe.discovery import build_registry

    messages: list[CheckMessage] = []
    if config["REGISTER"]:
        instance = _planned_instance()
        if is_loopback(instance.host):
            messages.append(Warning(
                f"The instance is advertised at {instance.address}, a loopback address other "
                "hosts cannot dial.",
                hint='Set REGISTRY["ADVERTISE"] to the address clients reach this host at, or '
                'serve on a routable GRPC["HOST"]; silence registry.W001 if every client runs on '
                "this host.",
                id="registry.W001",
            ))

    async def look() -> dict[str, int]:
        registry = build_registry()
        try:
            names = await registry.services()
            return {name: len(await registry.instances(name)) for name in names}
        finally:
            try:
                await registry.close()
            except Exception:
                pass

    try:
        found = asyncio.run(with_timeout(look(), DEPLOY_TIMEOUT))
    except Exception as err:
        messages.append(Warning(
            f"The registry ({config.get('BACKEND')}) cannot be reached: {err or 'timed out'}",
            hint="Check REGISTRY[\"OPTIONS\"] (endpoints, credentials, TLS) and that the registry "
            "runs; services keep calling known instances from their cache while it is down.",
            id="registry.W002",
        ))
        return messages
    counts = [f"{name} ({count})" for name, count in sorted(found.items())]
    listing = ", ".join(counts) or "no service"
    messages.append(Info(f"The registry holds {listing}.", id="registry.I001"))
    return messages
