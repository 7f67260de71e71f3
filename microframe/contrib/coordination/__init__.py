"""Coordination of a service's instances on etcd: locks with fencing tokens, leader election,
and periodic TASKS run on every instance or on the leader only.

    from microframe.contrib.coordination import lock

    async with lock("invoices") as held:
        await store.write(invoice, fencing_token=held.token)

See docs/topics/coordination.md. aetcd (the ``etcd`` extra) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from microframe.contrib.coordination.exceptions import CoordinationUnavailable, LockTimeout

if TYPE_CHECKING:
    from microframe.contrib.coordination.election import Election
    from microframe.contrib.coordination.locks import Lock, lock

__all__ = ["CoordinationUnavailable", "Election", "Lock", "LockTimeout", "lock"]


def __getattr__(name: str) -> Any:
    if name in ("Lock", "lock"):
        from microframe.contrib.coordination import locks

        return getattr(locks, name)
    if name == "Election":
        from microframe.contrib.coordination.election import Election

        return Election
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
