"""The settings a configuration center adds, and how they reach ``settings``.

At start-up (the first access to ``settings``, when ``CONFIG["BACKEND"]`` is set) the stored
layers are read and applied over the module and its YAML overlays: the shared one, then the
service's own, each value merged into the local one as a YAML overlay is
(:func:`~microframe.conf.deep_merge`). What was read is saved to a disk cache
(``CONFIG["CACHE_DIR"]/<SERVICE_NAME>.json``, mode 0600); when the backend cannot be reached the
cache is applied instead, with a warning, as discovery does for instances. With neither, the
start fails with an :class:`~microframe.core.exceptions.ImproperlyConfigured` naming both.

:data:`state` remembers the local values (to compute a setting again when its stored value
changes or goes) and what was applied (``manage.py config diff``, the ``config`` checks).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from microframe.contrib.config.backend import (
    ConfigBackend,
    ConfigUnavailable,
    Layers,
    config_options,
    make_backend,
)
from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.files import user_temp_directory

logger = logging.getLogger("microframe.config")

#: The cache's directory when ``CONFIG["CACHE_DIR"]`` is None: this user's own, in the
#: temporary directory (a directory there that another user made is never used: a service
#: would start with the settings someone else put in it).
DEFAULT_CACHE_DIR = user_temp_directory("microframe-config")
#: A setting absent from the local settings (it exists only in the configuration center).
MISSING: Any = object()
T = TypeVar("T")


@dataclass
class ConfigState:
    """What the configuration center gave this process."""

    #: The local value of every setting (module and YAML overlays), before any layer.
    local: dict[str, Any] = field(default_factory=dict)
    #: The layers applied (None: no configuration center).
    layers: Layers | None = None
    #: "etcd at ..." when read from the backend, the cache file when read from it.
    source: str = ""
    from_cache: bool = False
    #: Settings whose stored value changed since start-up but need a restart (setting ->
    #: the revision of the change).
    restart_needed: dict[str, int] = field(default_factory=dict)


state = ConfigState()


def effective(name: str, local: dict[str, Any], layers: Layers) -> Any:
    """The value of ``name``: its local one, then the shared layer's, then the service's
    (:data:`MISSING` when none has it)."""
    from microframe.conf import deep_merge

    value = local.get(name, MISSING)
    for scope in (layers.shared, layers.service):
        stored = scope.get(name)
        if stored is not None:
            value = stored.value if value is MISSING else deep_merge(value, stored.value)
    return value


def run_sync(make: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run the coroutine ``make()`` returns on an event loop of its own, in a thread, and
    return its result within ``timeout`` seconds.

    Settings are loaded on first access, which may happen inside a running event loop (where
    ``asyncio.run`` is refused) or outside any: a thread of its own serves both."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as err:  # handed to the caller
            result["error"] = err

    thread = threading.Thread(target=target, name="microframe-config-load", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ConfigUnavailable(f"no answer within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


def cache_path(service: str) -> Path:
    directory = config_options().get("CACHE_DIR")
    return (Path(directory) if directory else DEFAULT_CACHE_DIR) / f"{service}.json"


def _trusted_root() -> Path | None:
    """Where the cache's directories are checked from: the temporary directory for the
    default one; None (the directory itself only) for one ``CACHE_DIR`` names."""
    return None if config_options().get("CACHE_DIR") else Path(tempfile.gettempdir())


def cache_directory(service: str) -> Path:
    """The cache's directory, made (mode 0700) and checked to be this user's alone
    (:class:`~microframe.utils.files.UnsafePath` otherwise)."""
    from microframe.utils.files import private_directory

    return private_directory(cache_path(service).parent, _trusted_root())


def save_cache(service: str, layers: Layers, source: str) -> None:
    """Write what was read to the disk cache (best effort: a failure is logged)."""
    from microframe.utils.files import atomic_write_text

    path = cache_path(service)
    data = {"service": service, "source": source, "saved_at": time.time(), **layers.to_json()}
    try:
        cache_directory(service)
        atomic_write_text(path, json.dumps(data, sort_keys=True))  # mkstemp: mode 0600
    except OSError as err:
        logger.warning("cannot write the configuration cache %s: %s", path, err)


def load_cache(service: str) -> tuple[Layers, float] | None:
    """The layers last saved for ``service`` and when (None: no usable cache)."""
    from microframe.utils.files import read_private_text

    path = cache_path(service)
    try:
        data = json.loads(read_private_text(path, _trusted_root()))
        return Layers.from_json(data), float(data["saved_at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring the configuration cache %s: %s", path, err)
        return None


async def read_layers(backend_factory: Callable[[], ConfigBackend | None] = make_backend) -> (
    tuple[Layers, str] | None
):
    """Read the layers from the configured backend (on the running loop), and close it."""
    backend = backend_factory()
    if backend is None:
        return None
    try:
        return await backend.load(), backend.where()
    finally:
        await backend.close()


def startup_timeout() -> float:
    options = config_options().get("OPTIONS") or {}
    return float(options.get("dial_timeout", 2.0)) + float(options.get("timeout", 5.0)) + 1


def apply_layers(settings: Any, layers: Layers) -> list[str]:
    """Set every setting ``layers`` holds on ``settings`` (the lazy proxy); return their
    names. The local values are remembered first (:data:`state`)."""
    if not state.local:
        state.local = {
            name: copy.deepcopy(getattr(settings, name)) for name in dir(settings) if name.isupper()
        }
    state.layers = layers
    applied = []
    for name in sorted(layers.settings()):
        value = effective(name, state.local, layers)
        if value is not MISSING:
            setattr(settings, name, value)
            applied.append(name)
    return applied


def load_at_startup(settings: Any) -> None:
    """Read the layers (or the cache) and apply them to ``settings``; see the module docstring.

    Called by :class:`~microframe.conf.LazySettings` once the module and its overlays are
    loaded; does nothing without ``CONFIG["BACKEND"]``.
    """
    if not config_options().get("BACKEND"):
        return
    service = settings.SERVICE_NAME
    try:
        found = run_sync(read_layers, startup_timeout())
    except ConfigUnavailable as err:
        cached = load_cache(service)
        path = cache_path(service)
        if cached is None:
            raise ImproperlyConfigured(
                f"CONFIG: cannot read the settings of {service!r} ({err}), and there is no "
                f"cache of them at {path}: start once with the configuration center reachable, "
                'or set CONFIG["BACKEND"] = None.'
            ) from None
        layers, saved_at = cached
        age = time.time() - saved_at
        logger.warning(
            "configuration center unreachable (%s): using the values cached %s, %.0f s ago "
            "(revision %d)", err, path, age, layers.revision,
        )
        state.source, state.from_cache = str(path), True
        apply_layers(settings, layers)
        return
    assert found is not None
    layers, where = found
    for key, why in layers.invalid.items():
        logger.error("configuration center: ignoring %s: %s", key, why)
    state.source, state.from_cache = where, False
    applied = apply_layers(settings, layers)
    save_cache(service, layers, where)
    if applied:
        logger.info(
            "settings from %s at revision %d: %s", where, layers.revision, ", ".join(applied)
        )


def reset() -> None:
    """Forget what was applied (tests; settings reloaded from scratch)."""
    state.__dict__.update(ConfigState().__dict__)
