"""``DiscoveryCache``: the instances of the services a process calls, kept fresh by a watch,
kept on disk, and kept in use when the registry is unreachable.

For every service asked for, the cache:

1. loads the last snapshot saved on disk (``REGISTRY["CACHE_DIR"]/<service>.json``), so that a
   process started while the registry is down still knows where to call;
2. watches the service in the registry (an initial read, then every change) and applies each
   change to what it knows, in the work of what changed: a fleet of 10,000 instances costs no
   more per change than one of 10. Bursts of changes are coalesced: the listeners (the
   clients) see the latest set at once after a quiet period, then at most once every
   :data:`COALESCE` seconds while changes keep coming, with what changed since they last
   saw it. The snapshot on disk follows at most once every :data:`SNAPSHOT_INTERVAL`
   seconds, written by a thread (write then rename), never by the event loop;
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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from microframe.core.signals import setting_changed
from microframe.discovery.instance import InvalidInstance, ServiceInstance
from microframe.discovery.metrics import registry_metrics
from microframe.discovery.registry import Changes, Registry, RegistryError, RegistryUnavailable
from microframe.utils.files import (
    atomic_write_text,
    private_directory,
    read_private_text,
    user_temp_directory,
)
from microframe.utils.loops import PerLoop
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.registry")

#: The snapshots' directory when ``REGISTRY["CACHE_DIR"]`` is None: this user's own, in the
#: temporary directory (a directory there that another user made is never used).
DEFAULT_CACHE_DIR = user_temp_directory("microframe-discovery")
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
#: Seconds between two notifications of the listeners of a service while changes keep coming
#: (the first change after a quiet period is notified at once).
COALESCE = 0.05
#: Seconds between two writes of a service's snapshot (the first after a quiet period is
#: written at once).
SNAPSHOT_INTERVAL = 1.0
#: Above this share of the set changed at once, the ordered lists are made anew rather than
#: edited in place.
_REBUILD_SHARE = 8

Listener = Callable[[str, "InstanceList"], None]


@dataclass(frozen=True)
class SetChanges:
    """What changed between two sets of a service handed to its listeners."""

    added: tuple[ServiceInstance, ...] = ()
    removed: tuple[ServiceInstance, ...] = ()
    #: (before, after) of the instances whose value changed (weight, metadata, address).
    updated: tuple[tuple[ServiceInstance, ServiceInstance], ...] = ()


class InstanceList(list[ServiceInstance]):
    """The instances of a service at one moment, in id order: what the cache hands out.

    Never changed once handed out (a new set is a new list), so that whoever derives
    something from one (a balancer's view) can keep it for as long as the same list comes
    back. ``weights`` are the instances' weights in the same order; ``changes`` is what
    changed from the set handed out before this one (everything is added in the first).
    """

    __slots__ = ("weights", "changes")

    weights: list[int]
    changes: SetChanges


class _Entry:
    __slots__ = (
        "instances", "known", "fresh", "stale_since", "ready", "task", "listeners", "version",
        "by_id", "ids", "items", "weights", "pending", "notify_at", "notified_at",
        "saved_at", "save_at", "saving",
    )

    def __init__(self) -> None:
        self.instances = _publish([], [], SetChanges())  # handed out: the last notified set
        self.known = False  # from the registry or from a snapshot
        self.fresh = False  # confirmed by the registry since the last failure
        self.stale_since: float | None = None
        self.ready = asyncio.Event()  # set once known (or once the first attempt failed)
        self.task: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []
        self.version = 0
        # The current set, edited in place change by change: by id, and in id order (the
        # ids, the instances and their weights, index for index).
        self.by_id: dict[str, ServiceInstance] = {}
        self.ids: list[str] = []
        self.items: list[ServiceInstance] = []
        self.weights: list[int] = []
        # What each id changed since the last notification had: id -> instance then (None:
        # it was not there).
        self.pending: dict[str, ServiceInstance | None] = {}
        self.notify_at: asyncio.TimerHandle | None = None
        self.notified_at = float("-inf")
        self.saved_at = float("-inf")
        self.save_at: asyncio.TimerHandle | None = None
        self.saving: asyncio.Future[None] | None = None


def _publish(
    items: list[ServiceInstance], weights: list[int], changes: SetChanges
) -> InstanceList:
    published = InstanceList(items)
    published.weights = list(weights)
    published.changes = changes
    return published


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
        # The default directory is checked from the temporary directory down; one the user
        # named is theirs to secure, and only checked itself.
        self._trusted = None if cache_dir else Path(tempfile.gettempdir())
        self.first_read_timeout = first_read_timeout
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    # -- reading -------------------------------------------------------------------------------

    async def instances(self, service: str) -> InstanceList:
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

    def known(self, service: str) -> InstanceList | None:
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
        """Call ``listener(service, instances)`` on the loop whenever the set changes
        (coalesced: see the module's description); ``instances.changes`` says what changed."""
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
                self._replace(entry, snapshot)
                entry.pending.clear()
                entry.instances = _publish(
                    entry.items, entry.weights, SetChanges(added=tuple(entry.items))
                )
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
        watch_changes = getattr(self.registry, "watch_changes", None)
        while not self._closed:
            try:
                updates = (
                    watch_changes(service) if watch_changes is not None
                    else self.registry.watch(service)
                )
                async for update in updates:
                    if isinstance(update, Changes):
                        self._apply(entry, update.put, update.deleted)
                    else:
                        self._replace(entry, update)
                    self._confirmed(service, entry)
                    backoff = BACKOFF_START
                    if failures:
                        logger.info(
                            "discovery: %s: the registry answers again (%d instances)",
                            service, len(entry.by_id),
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

    # -- applying changes ----------------------------------------------------------------------

    def _apply(
        self, entry: _Entry, put: Iterable[ServiceInstance], deleted: Iterable[str]
    ) -> None:
        """Apply what a watch event changed, in O(log N) per instance (and a copy of
        pointers, made in C, when an instance comes or goes)."""
        by_id, pending = entry.by_id, entry.pending
        ids, items, weights = entry.ids, entry.items, entry.weights
        for instance in put:
            key = instance.id
            old = by_id.get(key)
            if old == instance:
                continue
            if key not in pending:
                pending[key] = old
            by_id[key] = instance
            at = bisect_left(ids, key)
            if old is None:
                ids.insert(at, key)
                items.insert(at, instance)
                weights.insert(at, instance.weight)
            else:
                items[at] = instance
                weights[at] = instance.weight
        for key in deleted:
            old = by_id.pop(key, None)
            if old is None:
                continue
            if key not in pending:
                pending[key] = old
            at = bisect_left(ids, key)
            del ids[at], items[at], weights[at]

    def _replace(self, entry: _Entry, found: Sequence[ServiceInstance]) -> None:
        """Make the set ``found`` (a whole set, from the initial read or a backend without
        changes of its own), recording what differs from the current one."""
        new = {i.id: i for i in found}
        by_id = entry.by_id
        deleted = [key for key in by_id if key not in new]
        put = [i for key, i in new.items() if by_id.get(key) != i]
        if (len(put) + len(deleted)) * _REBUILD_SHARE < len(by_id) or not (put or deleted):
            self._apply(entry, put, deleted)
            return
        pending = entry.pending
        for key in deleted:
            pending.setdefault(key, by_id[key])
        for instance in put:
            pending.setdefault(instance.id, by_id.get(instance.id))
        entry.by_id = new
        entry.ids = sorted(new)
        entry.items = [new[key] for key in entry.ids]
        entry.weights = [i.weight for i in entry.items]

    def _confirmed(self, service: str, entry: _Entry) -> None:
        """The registry answered: the set is fresh; notify what changed (coalesced)."""
        first = not entry.known
        entry.known = True
        if not entry.fresh or entry.stale_since is not None:
            entry.fresh = True
            entry.stale_since = None
            metrics = registry_metrics()
            metrics.stale.labels(service).set(0)
            metrics.stale_seconds.labels(service).set(0)
        if first and not entry.pending:
            entry.version += 1  # known now, empty
            self._save_snapshot_soon(service, entry)
        if entry.pending and entry.notify_at is None:
            loop = asyncio.get_running_loop()
            due = entry.notified_at + COALESCE
            if first or loop.time() >= due:
                self._notify(service, entry)
            else:
                entry.notify_at = loop.call_at(due, self._notify, service, entry)
        entry.ready.set()

    def _notify(self, service: str, entry: _Entry) -> None:
        """Hand the listeners the current set and what changed since they last saw one."""
        entry.notify_at = None
        entry.notified_at = asyncio.get_running_loop().time()
        pending, entry.pending = entry.pending, {}
        by_id = entry.by_id
        added, removed, updated = [], [], []
        for key, before in pending.items():
            after = by_id.get(key)
            if before is None:
                if after is not None:
                    added.append(after)
            elif after is None:
                removed.append(before)
            elif after != before:
                updated.append((before, after))
        if not (added or removed or updated):
            return
        published = entry.instances = _publish(
            entry.items, entry.weights, SetChanges(tuple(added), tuple(removed), tuple(updated))
        )
        entry.version += 1
        registry_metrics().instances.labels(service).set(len(published))
        self._save_snapshot_soon(service, entry)
        for listener in list(entry.listeners):
            try:
                listener(service, published)
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
            data = json.loads(read_private_text(path, self._trusted))
            found = [ServiceInstance.from_dict(item) for item in data["instances"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidInstance) as err:
            logger.warning("discovery: ignoring the unreadable snapshot %s: %s", path, err)
            return None
        logger.info("discovery: %s: %d instances from the snapshot %s (saved %s)",
                    service, len(found), path, data.get("saved_at", "at an unknown time"))
        return found

    def _save_snapshot_soon(self, service: str, entry: _Entry) -> None:
        """Save the set within :data:`SNAPSHOT_INTERVAL` (at once after a quiet period)."""
        if entry.save_at is not None:
            return
        loop = asyncio.get_running_loop()
        due = max(loop.time(), entry.saved_at + SNAPSHOT_INTERVAL)
        entry.save_at = loop.call_at(due, self._start_saving, service, entry)

    def _start_saving(self, service: str, entry: _Entry) -> None:
        entry.save_at = None
        if entry.saving is not None and not entry.saving.done():
            self._save_snapshot_soon(service, entry)  # after the write under way
            return
        loop = asyncio.get_running_loop()
        entry.saved_at = loop.time()
        entry.saving = loop.run_in_executor(
            None, self._write_snapshot, service, list(entry.instances)
        )

    def _write_snapshot(self, service: str, found: list[ServiceInstance]) -> None:
        """Write the snapshot of ``service``, in a thread. The body joins the JSON each
        instance made once (:meth:`ServiceInstance.to_json`): the thread holds the GIL for a
        join, not for serializing the whole fleet again (150 ms at 10,000 instances)."""
        path = self._snapshot_path(service)
        body = "".join((
            '{"instances":[',
            ",".join([i.to_json() for i in found]),
            '],"saved_at":', json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            ',"service":', json.dumps(service), "}",
        ))
        try:
            private_directory(path.parent, self._trusted)
            atomic_write_text(path, body)
        except OSError as err:
            logger.warning("discovery: cannot save the snapshot %s: %s", path, err)

    async def flush(self) -> None:
        """Write now the snapshots not yet saved, and wait until every write is done."""
        while True:
            writes = [e.saving for e in self._entries.values()
                      if e.saving is not None and not e.saving.done()]
            if writes:  # a write under way: the one due after it starts once it is done
                await asyncio.gather(*writes, return_exceptions=True)
            due = [(service, e) for service, e in self._entries.items() if e.save_at is not None]
            if not due:
                return
            for service, entry in due:
                entry.save_at.cancel()  # type: ignore[union-attr]
                self._start_saving(service, entry)

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every watch (the snapshots stay on disk, the last changes written)."""
        self._closed = True
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for service, entry in self._entries.items():
            if entry.notify_at is not None:
                entry.notify_at.cancel()
            if entry.pending:  # changes not yet handed out: their snapshot is still due
                self._notify(service, entry)
        await self.flush()


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
