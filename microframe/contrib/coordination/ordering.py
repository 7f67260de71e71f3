"""The queue of etcd's concurrency recipes: keys under one prefix, served in the order of their
create revisions (Go's ``concurrency.Mutex`` and ``concurrency.Election`` use it).

A contender writes ``<prefix><lease id hex>`` under its lease, in a transaction that creates it
only if absent (:func:`enqueue`); the key's create revision is its place in the queue. The
contender whose key has the lowest create revision is served. The others each watch the
deletion of the key just before their own (:func:`wait_turn`) - not the head's, so that a
release wakes one contender, not all of them - and look again when it goes.

A contender served watches its own key too (:func:`key_gone`): a key deleted by someone else
(``etcdctl del``, an operator's cleanup) serves the next contender at once, so the one it
served must stop acting as if it still were, even though its lease lives on. Go's recipes
leave this to the caller; here a lock is then lost and a leader revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aetcd import rpc as etcdrpc
from aetcd.utils import prefix_range_end

__all__ = ["LeaseLost", "enqueue", "head", "key_gone", "queue_prefix", "wait_turn"]

_DELETE = etcdrpc.Event.EventType.DELETE
#: Seconds before looking again when a watch ended without the deletion (etcd restarting).
BROKEN_WATCH_PAUSE = 0.1
#: Seconds between attempts to watch a served key again while etcd cannot be reached (the
#: lease's keep-alive decides meanwhile whether the key is still held).
UNREACHABLE_PAUSE = 1.0


def queue_prefix(prefix: str | None, kind: str, name: str) -> str:
    """The key prefix of the queue ``name`` of ``kind`` (``locks``, ``elections``):
    ``<prefix>/<kind>/<name>/``, the prefix ``COORDINATION["PREFIX"]`` when None; ValueError
    for a name that is not a non-empty str."""
    from microframe.contrib.coordination import connection

    if not name or not isinstance(name, str):
        raise ValueError(f"the name of a {kind[:-1]} must be a non-empty str, not {name!r}")
    base = prefix.rstrip("/") if prefix is not None else connection.prefix()
    return f"{base}/{kind}/{name}/"


class LeaseLost(Exception):
    """The contender's lease was lost while it waited in the queue."""


async def enqueue(etcd: Any, operation: str, key: bytes, value: bytes, lease_id: int) -> int:
    """Create ``key`` (with ``value``, under ``lease_id``) unless it exists; return its create
    revision. A key left by an earlier attempt with the same lease keeps its place."""
    txn = etcdrpc.TxnRequest(
        compare=[etcdrpc.Compare(
            key=key, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL,
            create_revision=0,
        )],
        success=[etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=key, value=value, lease=lease_id)
        )],
        failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))],
    )
    reply = await etcd.rpc(
        operation, lambda c: c.kvstub.Txn(txn, timeout=etcd.timeout, metadata=c.metadata)
    )
    if reply.succeeded:
        return int(reply.header.revision)
    return int(reply.responses[0].response_range.kvs[0].create_revision)


async def head(etcd: Any, operation: str, prefix: bytes) -> Any | None:
    """Return the key-value at the head of the queue (lowest create revision), or None."""
    request = etcdrpc.RangeRequest(
        key=prefix, range_end=prefix_range_end(prefix), limit=1,
        sort_order=etcdrpc.RangeRequest.ASCEND, sort_target=etcdrpc.RangeRequest.CREATE,
    )
    reply = await etcd.rpc(
        operation, lambda c: c.kvstub.Range(request, timeout=etcd.timeout, metadata=c.metadata)
    )
    return reply.kvs[0] if reply.kvs else None


async def wait_turn(
    etcd: Any, operation: str, prefix: bytes, revision: int, lost: asyncio.Event
) -> None:
    """Wait until no key under ``prefix`` has a create revision below ``revision``.

    Raise :class:`LeaseLost` as soon as ``lost`` is set. The wait is unbounded: the caller
    bounds it (``asyncio.timeout``).
    """
    request = etcdrpc.RangeRequest(
        key=prefix, range_end=prefix_range_end(prefix), limit=1, keys_only=True,
        max_create_revision=revision - 1,
        sort_order=etcdrpc.RangeRequest.DESCEND, sort_target=etcdrpc.RangeRequest.CREATE,
    )
    while True:
        if lost.is_set():
            raise LeaseLost()
        reply = await etcd.rpc(
            operation,
            lambda c: c.kvstub.Range(request, timeout=etcd.timeout, metadata=c.metadata),
        )
        if not reply.kvs:
            return
        before, since = bytes(reply.kvs[0].key), reply.header.revision + 1
        stream = await etcd.rpc(
            operation, lambda c, key=before, since=since: c.open_watch(key, b"", since)
        )
        deleted = asyncio.ensure_future(_deleted(stream))
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({deleted, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (deleted, lost_wait):
                task.cancel()
            await asyncio.wait({deleted, lost_wait})
            stream.cancel()
        if deleted.done() and not deleted.cancelled() and deleted.result() is False:
            await asyncio.sleep(BROKEN_WATCH_PAUSE)
        # Deleted, lost, or the watch broke: look again (the request raises when etcd is gone).


async def _deleted(stream: Any) -> bool:
    """Return True when the watched key is deleted, False when the watch ends first."""
    with contextlib.suppress(Exception):
        while True:
            if any(event.type == _DELETE for event in await stream.read()):
                return True
    return False


async def key_gone(etcd: Any, operation: str, key: bytes, created: int) -> str:
    """Return (why) once ``key``, created at revision ``created``, is deleted or made anew;
    run until then (the caller cancels it when it lets the key go itself).

    A watch from the revision after ``created`` sees every change since; when the watch
    breaks (etcd restarting, the revision compacted) the key is read again before watching
    from the revision read.
    """
    since = created + 1
    request = etcdrpc.RangeRequest(key=key)
    while True:
        try:
            stream = await etcd.rpc(
                operation, lambda c, since=since: c.open_watch(key, b"", since)
            )
        except Exception:
            await asyncio.sleep(UNREACHABLE_PAUSE)
            continue
        try:
            while True:
                for event in await stream.read():
                    if event.type == _DELETE:
                        return f"its key {key.decode(errors='replace')} was deleted"
                    if event.kv.create_revision != created:
                        return f"its key {key.decode(errors='replace')} was made anew"
                    since = event.kv.mod_revision + 1
        except Exception:  # the watch broke: read the key, then watch again
            pass
        finally:
            stream.cancel()
        try:
            reply = await etcd.rpc(
                operation,
                lambda c: c.kvstub.Range(request, timeout=etcd.timeout, metadata=c.metadata),
            )
        except Exception:
            await asyncio.sleep(UNREACHABLE_PAUSE)
            continue
        if not reply.kvs or reply.kvs[0].create_revision != created:
            return f"its key {key.decode(errors='replace')} was deleted"
        since = reply.header.revision + 1
        await asyncio.sleep(BROKEN_WATCH_PAUSE)
