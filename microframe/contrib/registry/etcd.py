"""The etcd v3 registry backend (``microframe.contrib.registry.etcd.EtcdRegistry``), on aetcd.

Layout (DESIGN §6): an instance is the key ``<prefix>/<service name>/<instance id>`` whose value
is :meth:`ServiceInstance.to_json`, attached to a lease of its own (TTL ``ttl``) kept alive every
``ttl / 3`` seconds. When etcd loses the lease (etcd restarted on an empty data directory, the
lease expired during a network cut, someone revoked it), the next keep-alive says so and the
instance is registered again under a new lease, by itself.

Discovery reads ``<prefix>/<service>/`` (with the trailing slash, so ``foo`` never matches
``foobar``) page by page at one revision, then watches the range from the next revision and
yields what each revision changed (:meth:`EtcdRegistry.watch_changes`; ``watch`` yields the
whole set after each change). A broken watch raises :class:`RegistryUnavailable`; the
consumer watches again, which reads the current set anew.

Settings::

    REGISTRY = {
        "BACKEND": "microframe.contrib.registry.etcd.EtcdRegistry",
        "OPTIONS": {"endpoints": ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"], "ttl": 10},
    }
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

try:
    import aetcd  # noqa: F401 - to fail here, with the extra to install, when it is missing
    from aetcd import rpc as etcdrpc
    from aetcd.utils import prefix_range_end
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the etcd registry needs the aetcd package ({err}): pip install 'microframe-grpc[etcd]'"
    ) from err

from microframe.contrib.registry.etcd_transport import (
    DEFAULT_ENDPOINTS,
    EtcdClient,
    EtcdConnection,
    LeaseNotFound,
    being_cancelled,
)
from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import InvalidInstance, ServiceInstance
from microframe.discovery.metrics import registry_metrics
from microframe.discovery.registry import Changes, RegistryError, RegistryUnavailable, Update
from microframe.utils.timeouts import with_timeout

__all__ = ["EtcdRegistry", "EtcdStatus"]

logger = logging.getLogger("microframe.registry")

BACKEND = "etcd"
DEFAULT_PREFIX = "/microframe/services"
_PUT = etcdrpc.Event.EventType.PUT
#: Keys per message of the initial read (about 200 bytes each: well within etcd's and
#: gRPC's message caps, for a fleet of any size).
PAGE_SIZE = 2000
RETRY_INTERVAL = 0.5  # seconds between attempts while etcd is unreachable (at most ttl / 3)
T = TypeVar("T")


@dataclass(frozen=True)
class EtcdStatus:
    """What :meth:`EtcdRegistry.status` found: the member answering, and the cluster's state."""

    member_id: int
    member_name: str
    client_urls: tuple[str, ...]
    leader_id: int
    version: str
    revision: int
    members: int


@dataclass(eq=False)
class _Registration:
    """An instance registered through this registry, and its lease."""

    instance: ServiceInstance
    key: bytes
    lease_id: int | None = None
    task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failing: bool = False


class EtcdRegistry:
    """Register and find instances in etcd v3 (see the module docstring for the layout).

    Options (``REGISTRY["OPTIONS"]``): the connection's (``endpoints``, ``user``,
    ``password``, ``ca_cert``, ``cert``, ``key``, ``server_name``, ``timeout``,
    ``dial_timeout``: :class:`~microframe.contrib.registry.etcd_transport.EtcdConnection`),
    and

    - ``ttl``: seconds an instance outlives its process (its lease), default 10; kept alive
      every ``ttl / 3`` seconds;
    - ``prefix``: key prefix, default ``/microframe/services``.

    Every method is bounded by these timeouts and raises :class:`RegistryUnavailable`, naming
    the endpoints, when etcd cannot be reached or refuses the credentials.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str = DEFAULT_ENDPOINTS,
        ttl: int = 10,
        prefix: str = DEFAULT_PREFIX,
        user: str | None = None,
        password: str | None = None,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 5.0,
        dial_timeout: float = 2.0,
        server_name: str | None = None,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ImproperlyConfigured(
                f"etcd registry: ttl must be a whole number of seconds >= 1, not {ttl!r}"
            )
        self._metrics = registry_metrics()
        self._etcd = EtcdConnection(
            endpoints, user=user, password=password, ca_cert=ca_cert, cert=cert, key=key,
            timeout=timeout, dial_timeout=dial_timeout, server_name=server_name,
            what="etcd registry", error=RegistryUnavailable, closed_error=RegistryError,
            on_error=lambda operation: self._metrics.errors.labels(BACKEND, operation).inc(),
        )
        self.endpoints = self._etcd.endpoints
        self.server_name = self._etcd.server_name
        self.user = user
        self.timeout = self._etcd.timeout
        self.dial_timeout = self._etcd.dial_timeout
        self.ttl = ttl
        self.prefix = prefix.rstrip("/")
        self._registrations: dict[tuple[str, str], _Registration] = {}
        self._broken_watches: set[str] = set()
        self._closing = False  # close() called: no new work

    def __repr__(self) -> str:
        return f"<EtcdRegistry {','.join(self.endpoints)} {self.prefix}>"

    # Registration -------------------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        """Put ``instance`` under a new lease and keep it alive (see :class:`Registry`)."""
        self._check_open()
        reg = self._registrations.get((instance.name, instance.id))
        if reg is None:
            reg = _Registration(instance, self._key(instance.name, instance.id))
            self._registrations[(instance.name, instance.id)] = reg
        else:
            reg.instance = instance
        try:
            async with reg.lock:
                await self._put(reg)
        finally:
            if reg.task is None and self._registrations.get((instance.name, instance.id)) is reg:
                reg.task = asyncio.create_task(
                    self._keep_alive(reg), name=f"etcd keep-alive {instance.name}/{instance.id}"
                )

    async def deregister(self, instance: ServiceInstance) -> None:
        """Revoke the lease of ``instance`` (its key goes with it) and stop keeping it alive.

        An instance this registry did not register has its key deleted.
        """
        self._check_open()
        reg = self._registrations.pop((instance.name, instance.id), None)
        if reg is None:
            key = self._key(instance.name, instance.id)
            await self._rpc("deregister", lambda c: c.delete(key), patient=True)
        else:
            await self._withdraw(reg)
        logger.info("deregistered %s/%s from etcd", instance.name, instance.id)

    async def _withdraw(self, reg: _Registration) -> None:
        """Stop keeping ``reg`` alive and remove it: revoke its lease, or delete its key."""
        await _cancel(reg.task)
        async with reg.lock:  # a register() under way finishes first, so its lease is known
            lease_id = reg.lease_id
            if lease_id is None:
                await self._rpc("deregister", lambda c: c.delete(reg.key), patient=True)
                return
            with contextlib.suppress(LeaseNotFound):
                await self._rpc("deregister", lambda c: c.revoke_lease(lease_id), patient=True)
            reg.lease_id = None

    async def _put(self, reg: _Registration) -> None:
        """Write the key of ``reg`` under its lease, granting one when it has none."""
        value = reg.instance.to_json().encode()
        if reg.lease_id is not None:
            lease_id = reg.lease_id
            try:
                await self._rpc("register", lambda c: c.put(reg.key, value, lease=lease_id))
                return
            except LeaseNotFound:
                self._lost(reg)
        lease = await self._rpc("register", lambda c: c.lease(self.ttl))
        reg.lease_id = lease.id
        try:
            await self._rpc("register", lambda c: c.put(reg.key, value, lease=lease.id))
        except LeaseNotFound as err:
            reg.lease_id = None
            raise RegistryUnavailable(
                f"{self._where()}: lease {lease.id:x} vanished at once"
            ) from err
        self._metrics.registrations.labels(BACKEND, reg.instance.name).inc()
        logger.info(
            "registered %s/%s (%s) in etcd, lease %x, TTL %d s",
            reg.instance.name, reg.instance.id, reg.instance.address, lease.id, self.ttl,
        )

    def _lost(self, reg: _Registration) -> None:
        logger.warning(
            "etcd lost the lease of %s/%s; registering it again", reg.instance.name, reg.instance.id
        )
        self._metrics.lease_losses.labels(BACKEND, reg.instance.name).inc()
        reg.lease_id = None

    async def _keep_alive(self, reg: _Registration) -> None:
        """Refresh the lease every ``ttl / 3`` s; register again when etcd lost it."""
        interval = self.ttl / 3
        delay = interval if reg.lease_id is not None else min(interval, RETRY_INTERVAL)
        while True:
            await asyncio.sleep(delay)
            try:
                async with reg.lock:
                    if reg.lease_id is not None:
                        ttl = await self._refresh(reg.lease_id)
                        if ttl <= 0:
                            self._lost(reg)
                    if reg.lease_id is None:
                        await self._put(reg)
            except (RegistryError, LeaseNotFound) as err:
                log = logger.debug if reg.failing else logger.warning
                log("cannot keep %s/%s registered, retrying: %s",
                    reg.instance.name, reg.instance.id, err)
                reg.failing = True
                delay = min(interval, RETRY_INTERVAL)
                continue
            if reg.failing:
                logger.info("%s/%s is registered in etcd again", reg.instance.name, reg.instance.id)
                reg.failing = False
            delay = interval

    async def _refresh(self, lease_id: int) -> int:
        """Keep ``lease_id`` alive once; return its new TTL (0: etcd no longer knows it)."""
        reply = await self._rpc("keepalive", lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    # Discovery ----------------------------------------------------------------------------

    async def instances(self, service: str) -> list[ServiceInstance]:
        """Return the instances of ``service`` (one linearizable read, page by page)."""
        found, _ = await self._read_all(self._service_prefix(service), "instances")
        return sorted(found.values(), key=lambda i: i.id)

    async def _read_all(
        self, prefix: bytes, operation: str = "watch"
    ) -> tuple[dict[bytes, ServiceInstance], int]:
        """The instances under ``prefix`` and the revision they were read at: pages of
        :data:`PAGE_SIZE` keys, all at the revision of the first, so that a fleet of any size
        is read whole and consistent, in messages of bounded size. When etcd compacts that
        revision before the last page, the read starts again (twice at most)."""
        for attempt in range(3):
            try:
                return await self._read_pages(prefix, operation)
            except RegistryUnavailable as err:
                if "compacted" not in str(err) or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_pages(
        self, prefix: bytes, operation: str
    ) -> tuple[dict[bytes, ServiceInstance], int]:
        end = prefix_range_end(prefix)
        found: dict[bytes, ServiceInstance] = {}
        start, revision = prefix, 0
        while True:
            reply = await self._rpc(
                operation,
                lambda c, start=start, revision=revision: c.get_page(
                    start, end, limit=PAGE_SIZE, revision=revision
                ),
            )
            if not revision:
                revision = reply.header.revision
            found.update(self._parse(reply.kvs, prefix))
            if not reply.more or not reply.kvs:
                return found, revision
            start = bytes(reply.kvs[-1].key) + b"\0"

    async def watch(self, service: str) -> AsyncIterator[list[ServiceInstance]]:
        """Yield the instances of ``service``: the current set, then the set after each change
        (made from :meth:`watch_changes`; the discovery cache uses that one directly)."""
        current: dict[str, ServiceInstance] = {}
        async for update in self.watch_changes(service):
            if isinstance(update, Changes):
                for instance in update.put:
                    current[instance.id] = instance
                for instance_id in update.deleted:
                    current.pop(instance_id, None)
            else:
                current = {i.id: i for i in update}
            yield sorted(current.values(), key=lambda i: i.id)

    async def watch_changes(self, service: str) -> AsyncIterator[Update]:
        """Yield the instances of ``service`` (the whole set, read page by page), then what
        each etcd revision changed: a change costs what it changed, whatever the size of the
        fleet."""
        prefix = self._service_prefix(service)
        current, revision = await self._read_all(prefix)
        stream = await self._rpc(
            "watch", lambda c: c.open_watch(prefix, prefix_range_end(prefix), revision + 1)
        )
        if service in self._broken_watches:
            self._broken_watches.discard(service)
            self._metrics.watch_restarts.labels(BACKEND, service).inc()
        try:
            yield list(current.values())
            # Which id each key holds, to name the instance a deletion removed.
            ids = {key: instance.id for key, instance in current.items()}
            del current
            while True:
                try:
                    events = await stream.read()
                except (Exception, asyncio.CancelledError) as err:
                    if isinstance(err, asyncio.CancelledError) and being_cancelled():
                        raise  # our consumer is cancelled (closing the channel cancels its calls)
                    if self._closed:
                        return
                    self._broken_watches.add(service)
                    self._metrics.errors.labels(BACKEND, "watch").inc()
                    raise self._unavailable("watch", err) from err
                put: dict[str, ServiceInstance] = {}
                deleted: set[str] = set()
                for event in events:
                    key = bytes(event.kv.key)
                    instance = None
                    if event.type == _PUT:
                        instance = self._parse_one(key, event.kv.value, prefix)
                    old_id = ids.pop(key, None)
                    if old_id is not None:  # deleted, expired, overwritten (maybe with garbage)
                        put.pop(old_id, None)
                        deleted.add(old_id)
                    if instance is not None:
                        ids[key] = instance.id
                        deleted.discard(instance.id)
                        put[instance.id] = instance
                if put or deleted:
                    yield Changes(tuple(put.values()), tuple(deleted))
        finally:
            stream.cancel()

    async def services(self) -> list[str]:
        """Return the names of the services with at least one instance."""
        root = self.prefix.encode() + b"/"
        reply = await self._rpc("services", lambda c: c.get_prefix(root, keys_only=True))
        names = set()
        for kv in reply.kvs:
            name, sep, rest = bytes(kv.key)[len(root):].partition(b"/")
            if name and sep and rest and b"/" not in rest:
                names.add(name.decode(errors="replace"))
        return sorted(names)

    async def status(self) -> EtcdStatus:
        """Return the status of the member this registry talks to (``check --deploy``)."""
        reply = await self._rpc(
            "status",
            lambda c: c.maintenancestub.Status(
                etcdrpc.StatusRequest(), timeout=self.timeout, metadata=c.metadata
            ),
        )
        members = await self._rpc(
            "status",
            lambda c: c.clusterstub.MemberList(
                etcdrpc.MemberListRequest(), timeout=self.timeout, metadata=c.metadata
            ),
        )
        me = next((m for m in members.members if m.ID == reply.header.member_id), None)
        return EtcdStatus(
            member_id=reply.header.member_id,
            member_name=me.name if me is not None else "",
            client_urls=tuple(me.clientURLs) if me is not None else (),
            leader_id=reply.leader,
            version=reply.version,
            revision=reply.header.revision,
            members=len(members.members),
        )

    # Life cycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Revoke the leases of the instances registered here (best effort), then disconnect."""
        if self._closing:
            return
        self._closing = True
        registrations = list(self._registrations.values())
        self._registrations.clear()
        client = self._etcd.client
        if client is not None and client.connected and registrations:
            results = await asyncio.gather(
                *(with_timeout(self._withdraw(reg), self.timeout) for reg in registrations),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                logger.warning(
                    "%d of %d instance(s) not deregistered from etcd, they expire within %d s: %s",
                    len(failed), len(registrations), self.ttl, failed[0],
                )
        else:
            await asyncio.gather(*(_cancel(reg.task) for reg in registrations))
        await self._etcd.close()

    # Helpers ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise RegistryError(f"{self!r} is closed")

    def _key(self, service: str, instance_id: str) -> bytes:
        return f"{self.prefix}/{service}/{instance_id}".encode()

    def _service_prefix(self, service: str) -> bytes:
        if not service or "/" in service:
            raise ValueError(f"service name {service!r} must be non-empty and contain no '/'")
        return f"{self.prefix}/{service}/".encode()

    def _parse(self, kvs: Iterable[Any], prefix: bytes) -> dict[bytes, ServiceInstance]:
        found = {}
        for kv in kvs:
            key = bytes(kv.key)
            instance = self._parse_one(key, kv.value, prefix)
            if instance is not None:
                found[key] = instance
        return found

    @staticmethod
    def _parse_one(key: bytes, value: bytes, prefix: bytes) -> ServiceInstance | None:
        if b"/" in key[len(prefix):]:
            return None  # deeper than <prefix>/<service>/<id>: not an instance
        try:
            return ServiceInstance.from_json(value)
        except InvalidInstance as err:
            logger.warning("ignoring etcd key %s: %s", key.decode(errors="replace"), err)
            return None

    @property
    def _closed(self) -> bool:
        return self._etcd.closed

    def _where(self) -> str:
        return self._etcd.where()

    async def _connect(self) -> EtcdClient:
        return await self._etcd.connect()

    async def _rpc(
        self, operation: str, call: Callable[[EtcdClient], Awaitable[T]], *, patient: bool = False
    ) -> T:
        return await self._etcd.rpc(operation, call, patient=patient)

    def _unavailable(self, operation: str, err: BaseException) -> Exception:
        return self._etcd.unavailable(operation, err)



async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has finished.

    ``asyncio.wait`` does not raise the task's own CancelledError, while a cancellation of the
    caller still propagates (suppressing CancelledError around ``await task`` would swallow it).
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task})
