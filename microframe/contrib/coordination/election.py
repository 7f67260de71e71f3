"""Leader election on etcd leases: :class:`Election`.

The recipe is etcd's (Go's ``concurrency.Election``), the queue of
:mod:`~microframe.contrib.coordination.ordering`: a candidate writes
``<PREFIX>/elections/<name>/<lease id hex>`` (its value: who it is) under its lease; the key with
the lowest create revision leads, and the others wait for the key just before theirs to go.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeAlias

from microframe.contrib.coordination import connection
from microframe.contrib.coordination.locks import connection_ttl, finish, identity
from microframe.contrib.coordination.ordering import (
    LeaseLost,
    enqueue,
    head,
    key_gone,
    queue_prefix,
    wait_turn,
)
from microframe.contrib.coordination.session import Session

__all__ = ["Callback", "Election"]

logger = logging.getLogger("microframe.coordination")

Callback: TypeAlias = Callable[[], "Awaitable[None] | None"]

#: Seconds between campaigns while etcd cannot be reached.
RETRY_DELAY = 0.5


class Election:
    """The election ``name``: campaign for leadership, follow who leads.

    ``value`` is what :meth:`leader` returns while this candidate leads (default
    ``"<host> pid <pid>"``); ``ttl`` the seconds its leadership outlives its process (default
    ``COORDINATION["TTL"]``), its lease being kept alive every ``ttl / 3`` seconds.

    ``await election.campaign()`` returns once this candidate leads; ``async with election:``
    does the same and resigns at the end of the block; :meth:`start` campaigns in the
    background without waiting. A campaign goes on until :meth:`resign`: when leadership is
    lost (the lease expired or was revoked, etcd did not answer a keep-alive for ``ttl``
    seconds, or the leader's key was deleted by someone else), :meth:`on_revoked` callbacks
    are called and the candidate campaigns again by itself, behind the candidates already
    waiting; while etcd cannot be reached it retries every half second.

    :attr:`token` is the create revision of the leader's key while this candidate leads:
    strictly greater for each new leader, a fencing token as :attr:`Lock.token
    <microframe.contrib.coordination.locks.Lock.token>` is.
    """

    def __init__(
        self,
        name: str,
        value: str | None = None,
        ttl: int | None = None,
        *,
        connection: Any = None,
        prefix: str | None = None,
    ) -> None:
        queue_prefix(prefix or "/", "elections", name)  # a name that is not one raises here
        self.name = name
        self.value = identity() if value is None else value
        self.ttl = connection_ttl(ttl)
        self._etcd = connection
        self._prefix = prefix
        self.token: int | None = None
        self._elected_callbacks: list[Callback] = []
        self._revoked_callbacks: list[Callback] = []
        self._task: asyncio.Task[None] | None = None
        self._leading = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Election {self.name!r} {'leader' if self.is_leader else 'candidate'}>"

    @property
    def queue(self) -> str:
        """The key prefix of the candidates: ``<PREFIX>/elections/<name>/``."""
        return queue_prefix(self._prefix, "elections", self.name)

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now."""
        return self._leading.is_set()

    @property
    def campaigning(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_elected(self, callback: Callback) -> Callback:
        """Call ``callback()`` (a function or a coroutine function) each time this candidate
        becomes the leader; usable as a decorator."""
        self._elected_callbacks.append(callback)
        return callback

    def on_revoked(self, callback: Callback) -> Callback:
        """Call ``callback()`` each time this candidate stops leading (leadership lost, or
        :meth:`resign`); usable as a decorator."""
        self._revoked_callbacks.append(callback)
        return callback

    def _connection(self) -> Any:
        if self._etcd is None:
            self._etcd = connection.get_connection()
        return self._etcd

    def start(self) -> None:
        """Campaign in the background (no-op when already campaigning).

        Raise ImproperlyConfigured when no etcd is configured.
        """
        if self.campaigning:
            return
        self._connection()
        self._task = asyncio.create_task(self._campaign(), name=f"election {self.name}")

    async def campaign(self, timeout: float | None = None) -> None:
        """Campaign, and return once this candidate leads (TimeoutError after ``timeout``
        seconds; the campaign goes on in the background)."""
        self.start()
        async with asyncio.timeout(timeout):
            while not self.is_leader:
                waiter = asyncio.ensure_future(self._leading.wait())
                assert self._task is not None
                try:
                    await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if self._task.done() and not self.is_leader:
                    self._task.result()  # raises what ended the campaign
                    raise RuntimeError(f"{self!r}: the campaign ended")

    async def resign(self) -> None:
        """Stop campaigning and give leadership up (the lease is revoked: the next candidate
        leads at once)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await finish(asyncio.wait({task}))

    async def leader(self) -> str | None:
        """Return the value of the current leader (None when nobody campaigns)."""
        kv = await head(self._connection(), "election", self.queue.encode())
        return bytes(kv.value).decode() if kv is not None else None

    async def _campaign(self) -> None:
        etcd = self._connection()
        queue = self.queue.encode()
        failing = False  # while etcd cannot be reached: one warning, then debug lines
        while True:
            session = Session(etcd, self.ttl, what=f"election {self.name}")
            try:
                lease_id = await session.open()
                key = queue + f"{lease_id:x}".encode()
                revision = await enqueue(etcd, "campaign", key, self.value.encode(), lease_id)
                if failing:
                    logger.info("election %s: campaigning again", self.name)
                    failing = False
                await wait_turn(etcd, "campaign", queue, revision, session.lost)
                await self._elected(revision)
                reason = await _first(session.lost.wait(), key_gone(etcd, "campaign", key,
                                                                    revision))
                logger.warning("election %s: leadership lost (%s); campaigning again",
                               self.name, reason if isinstance(reason, str)
                               else session.lost_reason)
            except LeaseLost:
                logger.warning("election %s: the lease was lost while campaigning; again",
                               self.name)
            except Exception as err:
                log = logger.debug if failing else logger.warning
                log("election %s: cannot campaign, retrying every %.1f s: %s",
                    self.name, RETRY_DELAY, err)
                failing = True
            finally:
                await self._revoked()
                await finish(session.close())
            await asyncio.sleep(RETRY_DELAY)

    async def _elected(self, revision: int) -> None:
        self.token = revision
        self._leading.set()
        logger.debug("election %s: %s leads (token %d)", self.name, self.value, revision)
        await _call_all(self._elected_callbacks, f"election {self.name}: on_elected")

    async def _revoked(self) -> None:
        if not self._leading.is_set():
            return
        self._leading.clear()
        self.token = None
        await _call_all(self._revoked_callbacks, f"election {self.name}: on_revoked")

    async def __aenter__(self) -> Election:
        await self.campaign()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.resign()


async def _call_all(callbacks: list[Callback], what: str) -> None:
    """Call each of ``callbacks``, awaiting what they return; log (and go past) a failure."""
    for callback in list(callbacks):
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("%s callback %r failed", what, callback)


async def _first(*waits: Awaitable[Any]) -> Any:
    """Await the first of ``waits`` to finish, cancel the others; return its result."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    return next(iter(done)).result()
