"""Distributed locks on etcd leases: :func:`lock` and :class:`Lock`.

The recipe is etcd's own (Go's ``concurrency.Mutex``): a lock is a queue of keys
``<PREFIX>/locks/<name>/<lease id hex>``, each attached to its contender's lease and created in a
transaction only if absent; the key with the lowest create revision holds the lock, and each
waiter watches the deletion of the key just before its own (see
:mod:`~microframe.contrib.coordination.ordering`).

Why not aetcd's ``Client.lock()``: aetcd 1.0's ``Lock`` is one key per lock that every waiter
races to create when it is deleted - no queue, so no order among waiters, and every release
wakes them all. Its ``async with`` ignores that ``acquire()`` gave up after its default 10 s and
runs the block without the lock; its lease is never kept alive (a holder slower than ``ttl``
loses the lock and nothing tells it), a failed attempt leaves the lease it granted to expire,
and a release deletes the key but not the lease. It does record the revision of its put, but
neither documents nor exposes it as a fencing token. This module fixes all of that.

The fencing token (:attr:`Lock.token`) is the create revision of the holder's key: etcd's
revisions only grow, and a key is served only once every older key is gone, so each holder's
token is strictly greater than every earlier holder's. A lock cannot stop a holder that lost
its lease (paused longer than the TTL, cut from etcd) from still acting: only the resource can,
by refusing a write whose token is lower than the highest it has seen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from types import TracebackType
from typing import Any

from microframe.contrib.coordination import connection
from microframe.contrib.coordination.exceptions import LockTimeout
from microframe.contrib.coordination.ordering import (
    LeaseLost,
    enqueue,
    key_gone,
    queue_prefix,
    wait_turn,
)
from microframe.contrib.coordination.session import Session

__all__ = ["Lock", "lock"]

logger = logging.getLogger("microframe.coordination")

_finishing: set[asyncio.Task[Any]] = set()


def identity() -> str:
    """This process, as lock and election values name it: ``"host pid 1234"``."""
    return f"{socket.gethostname()} pid {os.getpid()}"


async def finish(coro: Any) -> None:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile (it then finishes in
    the background, and the cancellation propagates)."""
    task = asyncio.ensure_future(coro)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    await asyncio.shield(task)


class Lock:
    """A lock named ``name`` held on a lease of ``ttl`` seconds (``COORDINATION["TTL"]``).

    ``async with lock("name"):`` acquires it (waiting at most ``timeout`` seconds, None: for
    ever, then raising :class:`LockTimeout`) and releases it at the end of the block, on an
    exception or a cancellation too. While held, the lease is kept alive every ``ttl / 3``
    seconds; a process that dies without releasing holds the lock ``ttl`` seconds more at most.

    - :attr:`token`: the fencing token (see the module docstring);
    - :attr:`lost`: an :class:`asyncio.Event` set when the lease is lost while the lock is held
      (etcd says it expired or was revoked, or no keep-alive was answered for ``ttl`` seconds),
      or when the lock's key is deleted by someone else: another process may hold the lock
      from then on;
    - :attr:`valid`: held and not lost.

    ``connection`` (an EtcdConnection) and ``prefix`` default to what ``COORDINATION`` says.
    """

    def __init__(
        self,
        name: str,
        ttl: int | None = None,
        *,
        timeout: float | None = None,
        connection: Any = None,
        prefix: str | None = None,
    ) -> None:
        queue_prefix(prefix or "/", "locks", name)  # a name that is not one raises here
        ttl = connection_ttl(ttl)
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self._etcd = connection
        self._prefix = prefix
        self.token: int | None = None
        self.key: str | None = None
        self.lost = asyncio.Event()
        self._session: Session | None = None
        self._guard: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "held" if self.valid else ("lost" if self.lost.is_set() else "free")
        return f"<Lock {self.name!r} {state} token={self.token}>"

    @property
    def queue(self) -> str:
        """The key prefix of this lock's queue: ``<PREFIX>/locks/<name>/``."""
        return queue_prefix(self._prefix, "locks", self.name)

    @property
    def held(self) -> bool:
        """Whether this object acquired the lock and has not released it."""
        return self.token is not None

    @property
    def valid(self) -> bool:
        """Whether the lock is held and its lease not lost."""
        return self.token is not None and not self.lost.is_set()

    @property
    def lease_id(self) -> int | None:
        return self._session.lease_id if self._session is not None else None

    async def acquire(self, timeout: float | None = None) -> Lock:
        """Wait for the lock (at most ``timeout`` seconds, default the lock's) and take it.

        Raise :class:`LockTimeout` when the time is up (the key leaves the queue),
        :class:`CoordinationUnavailable` when etcd cannot be reached, ImproperlyConfigured when
        no etcd is configured.
        """
        if self._session is not None:
            raise RuntimeError(f"{self!r} is already held (or being acquired)")
        timeout = self.timeout if timeout is None else timeout
        etcd = self._etcd if self._etcd is not None else connection.get_connection()
        queue = self.queue.encode()
        value = identity().encode()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.lost = asyncio.Event()
        while True:
            session = Session(etcd, self.ttl, what=f"lock {self.name}", on_lost=self._lose)
            self._session = session
            try:
                async with asyncio.timeout_at(deadline):
                    lease_id = await session.open()
                    key = queue + f"{lease_id:x}".encode()
                    revision = await enqueue(etcd, "lock", key, value, lease_id)
                    await wait_turn(etcd, "lock", queue, revision, session.lost)
            except LeaseLost:
                await finish(self._drop(session))
                logger.warning("lock %s: the lease was lost while waiting; queuing again",
                               self.name)
                continue
            except TimeoutError:
                await finish(self._drop(session))
                raise LockTimeout(
                    f"lock {self.name!r} not acquired within {timeout:g} s"
                ) from None
            except BaseException:
                await finish(self._drop(session))
                raise
            self.token = revision
            self.key = key.decode()
            self.lost.clear()
            self._guard = asyncio.create_task(
                self._watch_key(etcd, key, revision), name=f"lock {self.name} key"
            )
            logger.debug("lock %s acquired (token %d)", self.name, revision)
            return self

    async def _watch_key(self, etcd: Any, key: bytes, revision: int) -> None:
        self._lose(await key_gone(etcd, "lock", key, revision))

    def _lose(self, reason: str) -> None:
        if self.token is not None:
            logger.warning("lock %s (token %d) lost: %s", self.name, self.token, reason)
            self.lost.set()

    async def _drop(self, session: Session) -> None:
        if self._session is session:
            self._session = None
        await session.close()

    async def release(self) -> None:
        """Release the lock: revoke its lease, which deletes its key (best effort: when etcd
        cannot be reached, the key expires with the lease within ``ttl`` seconds)."""
        session = self._session
        if session is None:
            return
        self.token = None
        self.key = None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.cancel()
        await finish(self._drop(session))

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


def connection_ttl(ttl: int | None) -> int:
    """``ttl``, or ``COORDINATION["TTL"]``; ValueError unless a whole number >= 1."""
    ttl = connection.default_ttl() if ttl is None else ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ValueError(f"ttl must be a whole number of seconds >= 1, not {ttl!r}")
    return ttl


def lock(name: str, ttl: int | None = None, *, timeout: float | None = None) -> Lock:
    """Return the :class:`Lock` ``name``, to use as ``async with lock("name"):``."""
    return Lock(name, ttl, timeout=timeout)

