"""Which etcd the coordination battery talks to: ``COORDINATION`` resolved to an
:class:`~microframe.contrib.registry.etcd_transport.EtcdConnection`.

``COORDINATION["OPTIONS"]`` are EtcdConnection's keyword arguments. When it is None the battery
uses the etcd the service already talks to: ``CONFIG["OPTIONS"]`` when the config center is
:class:`microframe.contrib.config.etcd.EtcdConfig`, else ``REGISTRY["OPTIONS"]`` (without the
registry's own ``ttl`` and ``prefix``) when the registry is
:class:`microframe.contrib.registry.etcd.EtcdRegistry`, else none: a lock or an election then
raises ImproperlyConfigured.

One connection is kept per event loop (a gRPC channel belongs to the loop that opened it) and
per set of options; :func:`close` closes the current loop's.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from microframe.conf import dict_setting, settings
from microframe.core.exceptions import ImproperlyConfigured

__all__ = ["Resolved", "close", "get_connection", "resolve"]

ETCD_CONFIG = "microframe.contrib.config.etcd.EtcdConfig"
ETCD_REGISTRY = "microframe.contrib.registry.etcd.EtcdRegistry"
#: Options of the etcd registry that are not EtcdConnection's.
REGISTRY_ONLY = frozenset({"ttl", "prefix"})


@dataclass(frozen=True)
class Resolved:
    """The etcd options coordination uses (None: no etcd) and which setting gave them."""

    options: dict[str, Any] | None
    source: str  # "COORDINATION", "CONFIG", "REGISTRY" or "" (none)


def resolve() -> Resolved:
    """Return the etcd options ``COORDINATION`` stands for (see the module docstring)."""
    config = dict_setting("COORDINATION")
    options = config.get("OPTIONS") if isinstance(config, dict) else None
    if options is not None:
        return Resolved(dict(options) if isinstance(options, dict) else options, "COORDINATION")
    center = getattr(settings, "CONFIG", None)
    if isinstance(center, dict) and center.get("BACKEND") == ETCD_CONFIG:
        return Resolved(dict(center.get("OPTIONS") or {}), "CONFIG")
    registry = dict_setting("REGISTRY")
    if isinstance(registry, dict) and registry.get("BACKEND") == ETCD_REGISTRY:
        found = registry.get("OPTIONS") or {}
        if isinstance(found, dict):
            return Resolved(
                {k: v for k, v in found.items() if k not in REGISTRY_ONLY}, "REGISTRY"
            )
    return Resolved(None, "")


def prefix() -> str:
    """``COORDINATION["PREFIX"]`` without its trailing slash."""
    return str(dict_setting("COORDINATION")["PREFIX"]).rstrip("/")


def default_ttl() -> int:
    """``COORDINATION["TTL"]``."""
    return int(dict_setting("COORDINATION")["TTL"])


_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def get_connection() -> Any:
    """Return the EtcdConnection of the running loop for the current settings (made once).

    Raise ImproperlyConfigured when no etcd is configured (see the module docstring).
    """
    resolved = resolve()
    if resolved.options is None:
        raise ImproperlyConfigured(
            "Locks and elections need etcd: set COORDINATION[\"OPTIONS\"] (e.g. "
            '{"endpoints": ["127.0.0.1:2379"]}), or use the etcd registry '
            f"({ETCD_REGISTRY}) or the etcd config center ({ETCD_CONFIG})."
        )
    if not isinstance(resolved.options, dict):
        raise ImproperlyConfigured(
            f'COORDINATION["OPTIONS"] must be a dict or None, not {resolved.options!r}'
        )
    loop = asyncio.get_running_loop()
    key = repr(sorted(resolved.options.items()))
    cached = _connections.get(loop)
    if cached is not None and cached[0] == key and not cached[1].closed:
        return cached[1]
    from microframe.contrib.coordination.exceptions import CoordinationUnavailable
    from microframe.contrib.registry.etcd_transport import EtcdConnection

    try:
        connection = EtcdConnection(
            **resolved.options, what="etcd coordination", error=CoordinationUnavailable,
            closed_error=CoordinationUnavailable,
        )
    except TypeError as err:
        raise ImproperlyConfigured(
            f"etcd coordination (options of {resolved.source}): {err}"
        ) from None
    if cached is not None and not cached[1].closed:
        task = loop.create_task(cached[1].close())  # the settings changed
        _background.add(task)
        task.add_done_callback(_background.discard)
    _connections[loop] = (key, connection)
    return connection


_background: set[asyncio.Task[None]] = set()


async def close() -> None:
    """Close the running loop's connection (locks and elections still open lose their etcd)."""
    cached = _connections.pop(asyncio.get_running_loop(), None)
    if cached is not None:
        await cached[1].close()
