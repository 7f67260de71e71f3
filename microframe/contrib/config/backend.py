"""What a configuration backend stores and answers: the layers of one service's settings.

A backend (``CONFIG["BACKEND"]``, :class:`microframe.contrib.config.etcd.EtcdConfig`) keeps
the JSON of single top-level settings in two scopes: the *shared* one, read by every service,
and the service's own, which wins. :class:`Layers` is what a read found, at one revision;
:class:`Change` what a revision changed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.protojson import within_depth

SHARED = "_shared"
#: The deepest a stored value may nest arrays and objects (settings nest four or five deep).
MAX_DEPTH = 32

#: Settings never taken from a configuration center: they name the service and where its
#: settings come from, which the layers themselves depend on.
FORBIDDEN = frozenset(
    {"SERVICE_NAME", "CONFIG", "SETTINGS_MODULE", "SERVICE_ROOT", "ENV", "SETTINGS_FILES",
     "CONF_DIR"}
)


class ConfigUnavailable(Exception):
    """The configuration backend cannot be reached (or refused the request)."""


class InvalidLayer(ValueError):
    """A stored value is not the JSON of a setting."""


@dataclass(frozen=True)
class Entry:
    """One stored setting: its decoded value, its JSON text, the revision it was written at."""

    value: Any
    raw: str
    revision: int


@dataclass
class Layers:
    """The stored settings of one service: ``shared`` then ``service``, read at ``revision``.
    ``invalid`` names the keys whose value is not a setting's JSON (with why)."""

    shared: dict[str, Entry] = field(default_factory=dict)
    service: dict[str, Entry] = field(default_factory=dict)
    revision: int = 0
    invalid: dict[str, str] = field(default_factory=dict)

    def scope(self, shared: bool) -> dict[str, Entry]:
        return self.shared if shared else self.service

    def settings(self) -> set[str]:
        return set(self.shared) | set(self.service)

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "shared": {name: [e.raw, e.revision] for name, e in self.shared.items()},
            "service": {name: [e.raw, e.revision] for name, e in self.service.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layers:
        def scope(items: dict[str, Any]) -> dict[str, Entry]:
            return {name: entry(raw, revision) for name, (raw, revision) in items.items()}

        return cls(scope(data["shared"]), scope(data["service"]), int(data["revision"]))


@dataclass(frozen=True)
class Change:
    """A setting written (``entry``) or deleted (``entry`` None) in a scope at ``revision``;
    ``error`` says why a written value is not a setting's JSON (``entry`` is None then)."""

    setting: str
    shared: bool
    entry: Entry | None
    revision: int
    error: str | None = None


@dataclass(frozen=True)
class Version:
    """A past value of a stored setting (``None``: the key was deleted at ``revision``)."""

    revision: int
    raw: str | None


def entry(raw: str | bytes, revision: int) -> Entry:
    """The entry of the stored text ``raw``; raise :class:`InvalidLayer` if it is no JSON, or
    JSON nested more than :data:`MAX_DEPTH` arrays and objects deep (Python's parser, every
    battery that walks a setting and the redaction of secrets recurse: a value nested a
    thousand deep would make each of them fail on it)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidLayer(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:
        raise InvalidLayer(f"not JSON ({err})") from None
    if not within_depth(value, MAX_DEPTH):
        raise InvalidLayer(f"nested more than {MAX_DEPTH} levels deep")
    return Entry(value, text, revision)


def is_setting_name(name: str) -> bool:
    """Whether ``name`` may be stored (see :func:`check_setting_name`)."""
    try:
        check_setting_name(name)
    except InvalidLayer:
        return False
    return True


def check_setting_name(name: str) -> None:
    """Raise :class:`InvalidLayer` unless ``name`` may be stored (an upper-case setting)."""
    if not name.isidentifier() or not name.isupper():
        raise InvalidLayer(f"{name!r} is not a setting name (upper case)")
    if name in FORBIDDEN:
        raise InvalidLayer(f"{name} cannot come from the configuration center")


class ConfigBackend(Protocol):
    """What ``CONFIG["BACKEND"]`` is: built with ``CONFIG["OPTIONS"]``, the prefix and the
    service name; every method raises :class:`ConfigUnavailable` when it cannot answer."""

    prefix: str
    service: str

    def where(self) -> str:
        """Where the settings are kept, for messages (``etcd at 10.0.0.1:2379``)."""

    async def load(self) -> Layers:
        """Read both scopes at one revision."""

    def changes(self, after: int) -> AsyncIterator[list[Change]]:
        """Yield what each revision after ``after`` changed in either scope."""

    async def put(self, setting: str, raw: str, *, shared: bool = False) -> int:
        """Store ``raw`` (a setting's JSON) for ``setting``; return the revision written."""

    async def delete(self, setting: str, *, shared: bool = False) -> int:
        """Remove ``setting`` from a scope; return the revision (0: it was not there)."""

    async def history(self, setting: str, *, shared: bool = False) -> list[Version]:
        """The values the key held, newest first, as far back as the backend keeps them."""

    async def close(self) -> None:
        """Release the connection."""


def config_options() -> dict[str, Any]:
    """``CONFIG`` completed with its defaults (a malformed one raises ImproperlyConfigured)."""
    from microframe.conf import dict_setting

    config = dict_setting("CONFIG")
    if not isinstance(config, dict):
        raise ImproperlyConfigured(f"CONFIG must be a dict, not {type(config).__name__}.")
    return config


def make_backend() -> ConfigBackend | None:
    """The backend ``CONFIG`` names, for this service (None: no configuration center)."""
    from microframe.conf import settings
    from microframe.utils.module_loading import import_string

    config = config_options()
    path = config.get("BACKEND")
    if not path:
        return None
    try:
        factory = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(f'CONFIG["BACKEND"] {path!r} cannot be imported: {err}') from err
    options = config.get("OPTIONS") or {}
    if not isinstance(options, dict):
        raise ImproperlyConfigured('CONFIG["OPTIONS"] must be a dict of keyword arguments.')
    try:
        backend: ConfigBackend = factory(
            prefix=config["PREFIX"], service=settings.SERVICE_NAME, **options
        )
    except TypeError as err:
        raise ImproperlyConfigured(f'CONFIG["OPTIONS"] do not suit {path}: {err}') from err
    return backend
