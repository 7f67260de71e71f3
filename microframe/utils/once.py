"""``once``: a function's value, made on the first call and kept (thread-safe).

Metrics are registered in prometheus_client's registry when they are made, and a second
registration of the same name fails: the batteries make theirs on first use, exactly once,
whichever thread gets there first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class once(Generic[T]):  # noqa: N801 - used as a decorator, like functools.cache
    """Decorate a function of no arguments: the first call runs it, every call returns that."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._value: T | None = None
        self._made = False
        self.__doc__ = factory.__doc__
        self.__name__ = factory.__name__

    def __call__(self) -> T:
        if not self._made:
            with self._lock:
                if not self._made:
                    self._value = self._factory()
                    self._made = True
        return self._value  # type: ignore[return-value]
