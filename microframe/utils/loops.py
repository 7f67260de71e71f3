"""``PerLoop``: one object per running event loop (registries, caches, channel pools).

Those hold connections and tasks that belong to the loop they were made on, so each loop gets
its own; the entries of closed loops are dropped when a new one is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """Build ``factory()`` once per running event loop and hand it back on later calls."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._objects: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        obj = self._objects.get(loop)
        if obj is None:
            for old in [old for old in self._objects if old.is_closed()]:
                del self._objects[old]
            obj = self._objects[loop] = self._factory()
        return obj

    def clear(self) -> None:
        """Forget every object (a setting they were built from changed)."""
        self._objects.clear()
