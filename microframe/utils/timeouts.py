"""``with_timeout``: ``asyncio.wait_for`` without its lost cancellations.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited
operation completes: the caller gets the result and goes on as if it had never been cancelled
(python/cpython#86296, fixed in 3.12 by rebuilding ``wait_for`` on ``asyncio.timeout``). A
task cancelled that way keeps running: a request handler outliving its call, a loop that cannot
be stopped. ``asyncio.timeout`` (3.11+) runs the operation in the caller's own task and has no
such window; this is ``wait_for``'s signature on top of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def with_timeout(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds (None: no limit); raise
    ``TimeoutError`` after that, as ``asyncio.wait_for`` does."""
    async with asyncio.timeout(timeout):
        return await awaitable
