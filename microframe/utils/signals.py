"""A minimal signal, in the style of Django's dispatcher: ``send`` (what a receiver raises
propagates), ``send_robust`` (logged instead), ``asend`` (receivers may be coroutines).

Written here rather than taken from a library: the framework needs only connect/disconnect/send
with weak references, and pulling in a dispatcher package for that is not worth a dependency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("microframe.signals")


class Signal:
    """Call every connected receiver with ``sender`` and keyword arguments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Callable[..., Any], *, weak: bool = True) -> Callable[..., Any]:
        """Connect ``receiver``; usable as a decorator."""
        key = _key(receiver)
        if weak:
            ref: Any = (
                weakref.WeakMethod(receiver)  # type: ignore[arg-type]
                if hasattr(receiver, "__self__") and hasattr(receiver, "__func__")
                else weakref.ref(receiver)
            )
        else:
            ref = _Strong(receiver)
        with self._lock:
            if not any(k == key for k, _ in self._receivers):
                self._receivers.append((key, ref))
        return receiver

    def disconnect(self, receiver: Callable[..., Any]) -> bool:
        """Disconnect ``receiver``; return whether it was connected."""
        key = _key(receiver)
        with self._lock:
            before = len(self._receivers)
            self._receivers = [(k, r) for k, r in self._receivers if k != key]
            return len(self._receivers) != before

    def _live(self) -> list[Callable[..., Any]]:
        """The receivers still alive, in connection order (a copy: a receiver may connect or
        disconnect others while the signal is sent)."""
        with self._lock:
            refs = [ref for _, ref in self._receivers]
        return [receiver for receiver in (ref() for ref in refs) if receiver is not None]

    def send(self, sender: Any, **kwargs: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call the live receivers in connection order and return their answers."""
        return [(receiver, receiver(sender=sender, **kwargs)) for receiver in self._live()]

    def send_robust(self, sender: Any, **kwargs: Any) -> None:
        """Call the live receivers in connection order, logging, not raising, what one raises
        (Django's ``send_robust``): for the signals of an ending, where every battery must get
        its turn."""
        for receiver in self._live():
            try:
                receiver(sender=sender, **kwargs)
            except Exception:
                logger.exception("a %s receiver (%r) failed", self.name, receiver)

    async def asend(self, sender: Any, **kwargs: Any) -> None:
        """Call the live receivers in connection order, awaiting those that are coroutines
        (``async def``), and log, not raise, what a receiver raises: one failing battery does
        not stop the others, nor the server's start or drain."""
        for receiver in self._live():
            try:
                answer = receiver(sender=sender, **kwargs)
                if asyncio.iscoroutine(answer):
                    await answer
            except Exception:
                logger.exception("a %s receiver (%r) failed", self.name, receiver)

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"


class _Strong:
    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _key(receiver: Any) -> Any:
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)
