"""What the coordination battery raises."""

from __future__ import annotations

__all__ = ["CoordinationUnavailable", "LockTimeout"]


class CoordinationUnavailable(Exception):
    """etcd cannot be reached, refused a request, or lost the lease a request needed."""


class LockTimeout(TimeoutError):
    """A lock was not acquired within its ``timeout`` (its key is removed from the queue)."""
