"""The registry of the settings: built from ``REGISTRY["BACKEND"]`` and ``REGISTRY["OPTIONS"]``,
one per event loop, and described for messages."""

from __future__ import annotations

from typing import Any

from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.signals import setting_changed
from microframe.discovery.registry import Registry
from microframe.utils.loops import PerLoop
from microframe.utils.module_loading import import_string

_registries: PerLoop[Registry] = PerLoop(lambda: build_registry())


def build_registry(backend: str | None = None, options: dict[str, Any] | None = None) -> Registry:
    """Return a new registry: ``backend`` (a dotted path) built with ``options``.

    Both default to ``REGISTRY["BACKEND"]`` and ``REGISTRY["OPTIONS"]``.
    """
    config: dict[str, Any] = {}
    if backend is None or options is None:
        from microframe.conf import settings

        config = settings.REGISTRY
    path = backend or config.get("BACKEND")
    if not path or not isinstance(path, str):
        raise ImproperlyConfigured(
            'REGISTRY["BACKEND"] must be the dotted path of a registry class.'
        )
    try:
        cls = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(
            f'REGISTRY["BACKEND"] {path!r} cannot be imported: {err}'
        ) from err
    kwargs = dict(config.get("OPTIONS") or {}) if options is None else dict(options)
    try:
        return cls(**kwargs)  # type: ignore[no-any-return]
    except TypeError as err:
        raise ImproperlyConfigured(f'REGISTRY["OPTIONS"] do not suit {path}: {err}') from err


def describe_registry(registry: Any) -> str:
    """Say which registry ``registry`` is, for messages: its backend, and the directory or the
    endpoints it reads (``the file registry in /tmp/microframe-registry/shop-1a2b3c4d``)."""
    backend = getattr(registry, "backend_name", type(registry).__name__)
    directory = getattr(registry, "directory", None)
    if directory is not None:
        return f"the {backend} registry in {directory}"
    endpoints = getattr(registry, "endpoints", None)
    if isinstance(endpoints, (list, tuple)) and endpoints:
        return f"the {backend} registry at {', '.join(map(str, endpoints))}"
    return f"the {backend} registry"


def get_registry() -> Registry:
    """Return this event loop's registry, built from settings on first use.

    A registry holds connections and tasks bound to one event loop, so each loop gets its own.
    """
    return _registries.get()


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "REGISTRY":
        _registries.clear()


setting_changed.connect(_reset)
