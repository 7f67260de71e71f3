"""``DiscoveryCache``: the instances of the services a process calls, kept fresh by a watch,
kept on disk, and kept in use when the registry is unreachable.

For every service asked for, the cache:

1. loads the last snapshot saved on disk (``REGISTRY["CACHE_DIR"]/<service>.json``), so that a
   process started while the registry is down still knows where to call;
2. watches the service in the registry (an initial read, then every change), replacing what it
   knows with each new set and saving it to disk (atomically: write then rename);
3. when the watch fails (registry unreachable, watch broken), keeps the last known instances,
   marks them stale (``microframe_discovery_stale{service} 1`` and one warning line), and
   restarts the watch with a backoff (0.2 s doubling to 5 s) until the registry answers, which
   resynchronises the set.

A set of instances is only replaced by what the registry says, never emptied because the
registry is unreachable: "the registry is down" and "there are no instances" stay different.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from microframe.core.signals import setting_changed
from microframe.discovery.instance import InvalidInstance, ServiceInstance
from microframe.discovery.metrics import registry_metrics
from microframe.discovery.registry import Registry, RegistryError, RegistryUnavailable
from microframe.utils.files import atomic_write_text
from microframe.utils.loops import PerLoop
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.registry")

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "microframe-discovery"
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0

Listener = Callable[[str, list[ServiceInstance]], None]


class _Entry:
    __slots__ = (
        "instances", "known", "fresh", "stale_since", "ready", "task", "listeners", "version",
    )

    def __init__(self) -> None:
        self.instances: list[ServiceInstance] = []
        self.known = False  # from the registry or from a snapshot
        self.fresh = False  # confirmed by the registry since the last failure
        self.stale_since: float | None = None
        self.ready = asyncio.Event()  # set once known (or once the first attempt failed)
        self.task: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []
        self.version = 0


class DiscoveryCache:
    """Instances of services, from ``registry``, cached in memory and in ``cache_dir``."""

    def __init__(
        self,
        registry: Registry,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        first_read_timeout: float = 3.0,
    ) -> None:
        self.registry = registry
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.first_read_timeout = first_read_timeout
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    # -- reading -------------------------------------------------------------------------------

    async def instances(self, service: str) -> list[ServiceInstance]:
        """Return the instances of ``service`` known now.

        The first call for a service starts its watch and waits (up to ``first_read_timeout``)
        for the registry's answer; if none comes, the disk snapshot answers. Raises
        :class:`RegistryUnavailable` only when neither the registry nor a snapshot knows the
        service.
        """
        entry = self._entry(service)
        if not entry.ready.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await with_timeout(entry.ready.wait(), self.first_read_timeout)
        if not entry.known:
            raise RegistryUnavailable(
                f"the instances of {service!r} are unknown: the registry did not answer and no "
                f"snapshot exists in {self.cache_dir}"
            )
        if entry.stale_since is not None:
            self._update_stale_seconds(service, entry)
        return entry.instances

    def known(self, service: str) -> list[ServiceInstance] | None:
        """Return what is known of ``service`` now, without waiting (None: nothing yet)."""
        entry = self._entries.get(service)
        return entry.instances if entry is not None and entry.known else None

    def is_stale(self, service: str) -> bool:
        """Tell whether the instances of ``service`` are not confirmed by the registry now."""
        entry = self._entries.get(service)
        return entry is None or not entry.fresh

    def version(self, service: str) -> int:
        """A number that changes every time the set of ``service`` changes."""
        entry = self._entries.get(service)
        return entry.version if entry is not None else 0

    def subscribe(self, service: str, listener: Listener) -> None:
        """Call ``listener(service, instances)`` on the loop whenever the set changes."""
        self._entry(service).listeners.append(listener)

    # -- the watch -----------------------------------------------------------------------------

    def _entry(self, service: str) -> _Entry:
        entry = self._entries.get(service)
        if entry is None:
            if self._closed:
                raise RegistryError("the discovery cache is closed")
            entry = self._entries[service] = _Entry()
            snapshot = self._load_snapshot(service)
            if snapshot is not None:
                entry.instances = snapshot
                entry.known = True
                entry.stale_since = time.monotonic()
                registry_metrics().stale.labels(service).set(1)
                registry_metrics().instances.labels(service).set(len(snapshot))
            entry.task = asyncio.create_task(
                self._watch(service, entry), name=f"microframe-discovery-{service}"
            )
        return entry

    async def _watch(self, service: str, entry: _Entry) -> None:
        backoff = BACKOFF_START
        failures = 0
        metrics = registry_metrics()
        backend = getattr(self.registry, "backend_name", type(self.registry).__name__)
        while not self._closed:
            try:
                async for found in self.registry.watch(service):
                    self._set(service, entry, list(found))
                    backoff = BACKOFF_START
                    if failures:
                        logger.info(
                            "discovery: %s: the registry answers again (%d instances)",
                            service, len(found),
                        )
                        failures = 0
                raise RegistryUnavailable("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as err:  # RegistryUnavailable, or a backend's own failure
                entry.fresh = False
                if entry.stale_since is None:
                    entry.stale_since = time.monotonic()
                metrics.stale.labels(service).set(1)
                self._update_stale_seconds(service, entry)
                if failures == 0:
                    level = logging.WARNING if isinstance(err, RegistryError) else logging.ERROR
                    logger.log(
                        level,
                        "discovery: %s: %s; using the last known instances (%d, stale) until the "
                        "registry answers",
                        service, err, len(entry.instances),
                        exc_info=not isinstance(err, RegistryError),
                    )
                failures += 1
                metrics.watch_restarts.labels(backend, service).inc()
                entry.ready.set()  # whoever waits gets the snapshot (or the error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _set(self, service: str, entry: _Entry, found: list[ServiceInstance]) -> None:
        changed = found != entry.instances or not entry.known
        entry.instances = found
        entry.known = True
        entry.fresh = True
        entry.stale_since = None
        metrics = registry_metrics()
        metrics.stale.labels(service).set(0)
        metrics.stale_seconds.labels(service).set(0)
        metrics.instances.labels(service).set(len(found))
        entry.ready.set()
        if changed:
            entry.version += 1
            self._save_snapshot(service, found)
            for listener in list(entry.listeners):
                try:
                    listener(service, found)
                except Exception:
                    logger.exception("discovery: a listener of %s failed", service)

    def _update_stale_seconds(self, service: str, entry: _Entry) -> None:
        seconds = 0.0 if entry.stale_since is None else time.monotonic() - entry.stale_since
        registry_metrics().stale_seconds.labels(service).set(seconds)

    # -- the disk snapshot ---------------------------------------------------------------------

    def _snapshot_path(self, service: str) -> Path:
        return self.cache_dir / f"{service}.json"

    def _load_snapshot(self, service: str) -> list[ServiceInstance] | None:
        path = self._snapshot_path(service)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = [ServiceInstance.from_dict(item) for item in data["instances"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidInstance) as err:
            logger.warning("discovery: ignoring the unreadable snapshot %s: %s", path, err)
            return None
        logger.info("discovery: %s: %d instances from the snapshot %s (saved %s)",
                    service, len(found), path, data.get("saved_at", "at an unknown time"))
        return found

    def _save_snapshot(self, service: str, found: list[ServiceInstance]) -> None:
        path = self._snapshot_path(service)
        body = json.dumps(
            {
                "service": service,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "instances": [i.to_dict() for i in found],
            },
            sort_keys=True,
        )
        try:
            atomic_write_text(path, body)
        except OSError as err:
            logger.warning("discovery: cannot save the snapshot %s: %s", path, err)

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every watch (the snapshots stay on disk)."""
        self._closed = True
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _new_cache() -> DiscoveryCache:
    from microframe.conf import settings
    from microframe.discovery.backend import get_registry

    return DiscoveryCache(get_registry(), settings.REGISTRY.get("CACHE_DIR"))


_caches: PerLoop[DiscoveryCache] = PerLoop(_new_cache)


def get_discovery_cache() -> DiscoveryCache:
    """Return this event loop's discovery cache, on
    :func:`~microframe.discovery.get_registry` and ``REGISTRY["CACHE_DIR"]``."""
    return _caches.get()


def _reset(*, setting: str, **kwargs: object) -> None:
    if setting == "REGISTRY":
        _caches.clear()


setting_changed.connect(_reset)
