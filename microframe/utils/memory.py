"""Give memory back to the system after a burst: ``malloc_trim`` when the heap grew.

grpc core allocates its buffers (messages being received, header blocks, write queues) with
the C allocator. glibc keeps the memory freed in its arenas for reuse and returns little of it
to the system on its own, so a process that buffered a few hundred megabytes for a moment (an
attack, or a burst of large messages) keeps them for good unless told: ``malloc_trim(0)``
releases the free pages of every arena. :class:`MemoryTrimmer` calls it, in a thread, when the
resident size has grown since the last look, or when told that large buffers were dropped.
There is no library for this; it is two C calls, made through ctypes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Any

logger = logging.getLogger("microframe.server")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]


def _load() -> tuple[Any, Any]:
    name = ctypes.util.find_library("c")
    if not name:
        return None, None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None, None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    info = getattr(libc, "mallinfo2", None)  # glibc 2.33+
    if info is not None:
        info.argtypes = []
        info.restype = _Mallinfo2
    return trim, info


_malloc_trim, _mallinfo2 = _load()


def free_heap_bytes() -> int | None:
    """Return the bytes the C allocator holds free (glibc's ``mallinfo2``), or None."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return int(info.fordblks + info.fsmblks)


def resident_bytes() -> int | None:
    """Return this process's resident set size in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def trim() -> bool:
    """Return the C allocator's free memory to the system; whether it could be asked."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class MemoryTrimmer:
    """Trim the C heap when it holds ``growth`` bytes free, looking every ``interval`` seconds.

    With glibc 2.33+ the allocator says how much it holds free (``mallinfo2``); free memory a
    trim could not return (fragments smaller than a page) is not tried again until ``growth``
    more bytes are free. Elsewhere the
    resident size is the signal: a trim when it is ``growth`` bytes over the lowest it has been,
    and, when a trim frees nothing (the memory is in use), a longer wait before the next one
    (doubling, up to ``longest`` seconds).
    """

    def __init__(
        self, interval: float = 2.0, growth: int = 16 << 20, longest: float = 60.0
    ) -> None:
        self.interval = interval
        self.growth = growth
        self.longest = longest
        self.floor = resident_bytes() or 0
        self.trims = 0
        #: Free bytes a trim could not return (fragments): not tried again until more is free.
        self._fruitless = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return _malloc_trim is not None and resident_bytes() is not None

    def start(self) -> None:
        if self.available and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="microframe-memory-trim"
            )

    def due(self) -> bool:
        """Whether a trim would give memory back now."""
        free = free_heap_bytes()
        if free is not None:
            if free < self.growth:
                self._fruitless = 0
            return free >= self.growth + self._fruitless
        return (resident_bytes() or 0) >= self.floor + self.growth

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.interval
        while True:
            await asyncio.sleep(wait)
            if not self.due():
                self.floor = min(self.floor, resident_bytes() or self.floor)
                continue
            rss = resident_bytes() or 0
            await loop.run_in_executor(None, trim)
            self.trims += 1
            after = resident_bytes() or 0
            freed = rss - after
            if freed >= 1 << 20:
                logger.info("returned %d MiB of freed memory to the system", freed >> 20)
                wait, self.floor = self.interval, after
            elif _mallinfo2 is None:
                wait = min(self.longest, wait * 2)
            else:
                self._fruitless = free_heap_bytes() or 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
