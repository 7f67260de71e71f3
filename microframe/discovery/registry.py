"""The registry protocol every backend implements, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from microframe.discovery.instance import ServiceInstance


class RegistryError(Exception):
    """A registry operation failed."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached (or refuses us: authentication, TLS)."""


@dataclass(frozen=True)
class Changes:
    """What changed in a watched service, as a backend saw it: ``put``, instances registered
    or registered again with a new value (an id already known replaces its instance), and
    ``deleted``, the ids of instances gone (deregistered, expired). Ids not named are
    unchanged."""

    put: Sequence[ServiceInstance] = ()
    deleted: Sequence[str] = ()


#: What :meth:`Registry.watch_changes` yields: the whole set, or what changed in it.
Update = list[ServiceInstance] | Changes


@runtime_checkable
class Registry(Protocol):
    """Where instances of services register and are found.

    Every method is a coroutine and safe to call from several tasks of one event loop. A
    backend is built from ``REGISTRY["OPTIONS"]`` as keyword arguments
    (``Backend(**options)``) and connects lazily, on first use.
    """

    async def register(self, instance: ServiceInstance) -> None:
        """Register ``instance`` and keep it registered until :meth:`deregister` or :meth:`close`.

        The backend keeps the registration alive in the background (lease keep-alive,
        heartbeats) and registers the instance again by itself when the registry lost it
        (lease expired, registry restarted or emptied). When the first attempt fails,
        :class:`RegistryUnavailable` is raised, and the backend keeps trying in the background
        all the same: a service started while its registry is down appears once it is back.
        Registering an instance again replaces its value (weight, metadata).
        """
        ...

    async def deregister(self, instance: ServiceInstance) -> None:
        """Remove ``instance`` (by name and id) at once and stop keeping it alive."""
        ...

    async def instances(self, service: str) -> list[ServiceInstance]:
        """Return the instances of ``service`` registered now (one read, no cache).

        Raises :class:`RegistryUnavailable` when the registry cannot be read.
        """
        ...

    def watch(self, service: str) -> AsyncIterator[list[ServiceInstance]]:
        """Yield the instances of ``service``: the current set first, then the whole new set
        after every change.

        Raises :class:`RegistryUnavailable` (from the iteration) when the registry becomes
        unreachable or the watch breaks; calling ``watch`` again reads the current set anew, so
        a consumer resynchronises by restarting the watch.
        """
        ...

    # A backend may also define ``watch_changes(service)``, an async iterator of
    # :data:`Update`: the whole set first (and after a resynchronisation), then each change
    # as :class:`Changes`, without the whole set. The discovery cache uses it when it is
    # there, so that a change costs what changed, not the size of the fleet; ``watch`` is
    # then whole sets made from the same changes, for consumers of its simpler form.

    async def services(self) -> list[str]:
        """Return the names of the services that have at least one instance."""
        ...

    async def close(self) -> None:
        """Deregister the instances registered through this object, then close connections.

        Best effort: when the registry is unreachable the registrations expire by themselves
        (TTL). Safe to call twice.
        """
        ...
