"""A lease of etcd kept alive while a lock is held or a candidate campaigns: :class:`Session`
(Go's ``concurrency.Session``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from microframe.contrib.coordination.exceptions import CoordinationUnavailable
from microframe.contrib.registry.etcd_transport import LeaseNotFound
from microframe.utils.timeouts import with_timeout

__all__ = ["Session"]

logger = logging.getLogger("microframe.coordination")

#: Seconds between keep-alive attempts while etcd does not answer (at most ttl / 3).
RETRY_INTERVAL = 0.5


class Session:
    """A lease of ``ttl`` seconds, refreshed every ``ttl / 3`` seconds until :meth:`close`.

    The lease is *lost* (``lost`` is set, ``on_lost`` called once) when a keep-alive says etcd
    no longer knows it (expired, revoked), or when no keep-alive was answered for ``ttl``
    seconds: by then etcd may have expired it, so this process must act as if it had. The
    deadline is counted from the moment the last answered keep-alive was *sent*, so that it
    falls no later than etcd's own expiry.
    """

    def __init__(
        self, etcd: Any, ttl: int, *, what: str, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.what = what
        self.lease_id: int | None = None
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> int:
        """Grant the lease and start keeping it alive; return its id."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        lease = await self.etcd.rpc("lease", lambda c: c.lease(self.ttl))
        self.lease_id = int(lease.id)
        self._task = asyncio.create_task(
            self._keep_alive(sent), name=f"etcd keep-alive {self.what} {self.lease_id:x}"
        )
        return self.lease_id

    async def _keep_alive(self, last_ok: float) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        lease_id = self.lease_id
        assert lease_id is not None
        delay = interval
        while True:
            await asyncio.sleep(max(0.0, min(delay, last_ok + self.ttl - loop.time())))
            sent = loop.time()
            left = last_ok + self.ttl - sent
            if left <= 0:
                self._lose(f"no keep-alive answered for {self.ttl} s")
                return
            try:
                reply = await with_timeout(
                    self.etcd.rpc("keepalive", lambda c: c.refresh_lease(lease_id)), left
                )
                remaining = int(reply.TTL) if reply is not None else 0
            except LeaseNotFound:
                remaining = 0
            except (CoordinationUnavailable, TimeoutError) as err:
                logger.debug("%s: keep-alive of lease %x failed: %s", self.what, lease_id, err)
                delay = min(interval, RETRY_INTERVAL)
                continue
            if remaining <= 0:
                self._lose("etcd says the lease expired or was revoked")
                return
            last_ok = sent
            delay = interval

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        logger.warning("%s: lease %x lost: %s", self.what, self.lease_id or 0, reason)
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    async def close(self) -> None:
        """Stop keeping the lease alive and revoke it (its keys go with it), best effort:
        when etcd cannot be reached the lease expires within ``ttl`` seconds."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        lease_id, self.lease_id = self.lease_id, None
        if lease_id is None:
            return
        try:
            with contextlib.suppress(LeaseNotFound):
                await self.etcd.rpc("revoke", lambda c: c.revoke_lease(lease_id))
        except Exception as err:
            logger.warning(
                "%s: cannot revoke lease %x, it expires within %d s: %s",
                self.what, lease_id, self.ttl, err,
            )
