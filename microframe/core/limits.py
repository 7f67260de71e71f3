"""What one call may take from the server: a call slot, a receive slot, bounded time.

grpc core gives a server few defences of its own against a client that misbehaves on purpose:
it opens a stream's flow-control window to the whole announced size of a message as soon as
the application waits for one (so a 4 MiB length prefix makes the server buffer 4 MiB), it
never gives up on a message that stops arriving halfway, nor on a reply the client never
reads. This module is the framework's side of those bounds (grpc's own, set through channel
arguments, are in :meth:`microframe.core.server.ServerConfig.channel_options`):

- :class:`CallTracker`: the calls the application is running, bounded by
  ``GRPC["MAX_CONCURRENT_RPCS"]`` in the process and ``GRPC["MAX_CALLS_PER_CONNECTION"]`` on
  one connection (health and reflection are served by grpc's own servicers and never
  counted), and the tasks serving them, so that a stop can answer the ones still
  running at the end of ``GRPC["GRACE"]`` itself;
- :class:`ReceiveSlots`: how many request messages may be still arriving at once
  (process-wide and per connection), which bounds the memory grpc may hold for partial
  messages;
- :class:`Watchdog`: one timer for the whole server that ends the waits (for a message, for
  the client to read a reply) that went past their limit, and gives a slow message its slot;
- :class:`MethodCap`: one timer per method ``GRPC["METHOD_TIMEOUTS"]`` caps, that ends the
  calls running past the cap.

These are written here rather than taken from a library because they have to sit between
grpc.aio's per-call coroutine and grpc core's buffers, where no library reaches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import Any

from microframe.conf import global_settings

_GRPC: dict[str, Any] = global_settings.GRPC

#: How often the watchdog looks at the waits it follows, in seconds: a limit is enforced
#: between ``limit`` and ``limit + TICK`` seconds.
TICK = 0.25
#: How long a request message may take to arrive before it needs a receive slot, in seconds
#: (see :class:`ReceiveSlots`); the watchdog looks this often while such reads are pending.
QUICK = 0.05


class Watchdog:
    """Cancel the tasks whose wait went past its limit, and give receive slots to the reads
    still waiting after :data:`QUICK` seconds (see :meth:`receiving` and :meth:`sending`).

    One timer, armed only while waits are followed, walks them every :data:`TICK` seconds (or
    :data:`QUICK` seconds while a read waits for its slot); following a wait costs a dict
    insertion and removal, not a timer per wait. The task tells a cancellation of the
    watchdog's from any other with :meth:`expired`.
    """

    __slots__ = ("slots", "_receives", "_sends", "_expired", "_handle", "_quick")

    def __init__(self, slots: ReceiveSlots | None = None) -> None:
        self.slots = slots if slots is not None else ReceiveSlots(1 << 30, 1 << 30, 1 << 30)
        #: task -> [limit, slot check time (None once checked), peer, later message?, slotted?]
        self._receives: dict[asyncio.Task[Any], list[Any]] = {}
        self._sends: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], bool] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._quick = False

    def __len__(self) -> int:
        return len(self._receives) + len(self._sends)

    def receiving(
        self, task: asyncio.Task[Any], now: float, limit: float, peer: str, later: bool
    ) -> None:
        """``task`` waits for a request message from ``peer`` (the connection; ``later``: not
        the call's first message) until ``limit``; past ``now + QUICK`` it needs a receive
        slot (times of ``time.monotonic()``). Call :meth:`received` when the wait ends,
        however it ends."""
        self._receives[task] = [limit, now + QUICK, peer, later, False]
        if not self._quick:
            self._rearm(QUICK)

    def received(self, task: asyncio.Task[Any]) -> None:
        entry = self._receives.pop(task, None)
        if entry is not None and entry[4]:
            self.slots.give(entry[2], entry[3])
        if self._expired:  # a cancellation of ours that did not reach the reader
            self._expired.pop(task, None)

    def sending(self, task: asyncio.Task[Any], limit: float) -> None:
        """``task`` waits for the client to take a reply until ``limit`` (``time.monotonic()``);
        call :meth:`sent` when the wait ends."""
        self._sends[task] = limit
        if self._handle is None:
            self._rearm(TICK)

    def sent(self, task: asyncio.Task[Any]) -> None:
        """The wait of :meth:`sending` ended (before the task reads :meth:`expired`)."""
        self._sends.pop(task, None)

    def expired(self, task: asyncio.Task[Any]) -> bool | None:
        """After a CancelledError in a watched task: None when the cancellation was not the
        watchdog's; else True when no receive slot was free for it, False when its limit passed
        (and the task's cancellation request is withdrawn)."""
        why = self._expired.pop(task, None)
        if why is not None:
            task.uncancel()
        return why

    def _rearm(self, delay: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._quick = delay == QUICK
        self._handle = loop.call_later(delay, self._sweep)

    def _expire(self, task: asyncio.Task[Any], no_slot: bool) -> None:
        if not task.done():
            self._expired[task] = no_slot
            task.cancel()

    def _sweep(self) -> None:
        self._handle = None
        self._quick = False
        now = monotonic()
        slots = self.slots
        checks_due = False
        for task, entry in list(self._receives.items()):
            if entry[0] <= now:
                self.received(task)
                self._expire(task, False)
            elif entry[1] is not None:
                if entry[1] > now:
                    checks_due = True
                elif slots.take(entry[2], entry[3]):
                    entry[1], entry[4] = None, True
                else:
                    self.received(task)
                    self._expire(task, True)
        for task, limit in list(self._sends.items()):
            if limit <= now:
                del self._sends[task]
                self._expire(task, False)
        if checks_due:
            self._rearm(QUICK)
        elif self._receives or self._sends:
            self._rearm(TICK)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


#: How soon after one another a :class:`MethodCap`'s timer may fire, in seconds: a call is
#: cut between its cap and its cap plus this.
CAP_RESOLUTION = 0.005


class MethodCap:
    """The time cap of one method (``GRPC["METHOD_TIMEOUTS"]``): cancel the tasks of its calls
    that run past it (see :meth:`follow`), and tell those cancellations from any other
    (:meth:`expired`).

    One timer per method, armed for the earliest limit of the calls followed: following a call
    costs a dict insertion and removal. An ``asyncio`` timer per call (``asyncio.timeout``)
    would cost a unary call more than the rest of the method handler does
    (bench/overhead.py). The timer fires at most every :data:`CAP_RESOLUTION` seconds.
    """

    __slots__ = ("seconds", "_calls", "_cut", "_handle", "_next")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: task -> its limit (a ``time.perf_counter()`` value)
        self._calls: dict[asyncio.Task[Any], float] = {}
        #: the tasks cancelled for their cap that have not yet read it (:meth:`expired`)
        self._cut: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def __len__(self) -> int:
        return len(self._calls)

    def follow(self, task: asyncio.Task[Any], limit: float) -> None:
        """Cancel ``task`` at ``limit`` (a ``time.perf_counter()`` value) unless
        :meth:`forget` is called first."""
        self._calls[task] = limit
        if self._handle is None or limit < self._next:
            self._arm(limit)

    def forget(self, task: asyncio.Task[Any]) -> None:
        """The capped part of ``task``'s call is over, however it ended."""
        del self._calls[task]
        if self._cut and task in self._cut:  # cut, and the cancellation was swallowed
            self._cut.discard(task)
            task.uncancel()

    def cut(self, task: asyncio.Task[Any]) -> bool:
        """Tell whether ``task`` was cancelled for its cap (and has not read it yet)."""
        return task in self._cut

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError in ``task``: whether the cap cancelled it, and nothing else
        did. The cap's cancellation request is withdrawn either way."""
        if task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0

    def _arm(self, limit: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._next = limit
        delay = max(limit - perf_counter(), CAP_RESOLUTION)
        self._handle = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = perf_counter()
        soonest = float("inf")
        calls = self._calls
        for task, limit in list(calls.items()):
            if limit <= now:
                if not task.done() and task not in self._cut:
                    self._cut.add(task)
                    task.cancel()
            elif limit < soonest:
                soonest = limit
        if soonest != float("inf"):
            self._arm(soonest)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _count_down(counts: dict[str, int], key: str) -> None:
    """Take one from ``counts[key]``, forgetting the key at zero (connections come and go)."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class ReceiveSlots:
    """Slots for request messages still arriving: ``total`` at once, ``per_connection`` of
    them on one connection, ``streams`` of them for the later messages of client streams.

    grpc buffers a message until it is whole, up to ``MAX_MESSAGE_BYTES``, but only while the
    application waits for one; before that a call costs at most its stream's window. A message
    that arrives with its call (or within :data:`QUICK` seconds of the read) needs no slot: a
    well-behaved unary call never needs one. One still arriving after that takes a slot, or,
    when none is free for its connection, its call is refused (RESOURCE_EXHAUSTED) at once and
    its buffer freed; a client stream waiting for its next message holds a slot meanwhile (it
    may be sent a large message at any moment), so many streams idle between messages need a
    smaller MAX_MESSAGE_BYTES or a larger RECEIVE_BUFFER_BYTES. So the memory of messages being
    received is at most ``total`` messages, plus what arrives in :data:`QUICK` seconds.
    """

    __slots__ = ("total", "per_connection", "streams", "in_use", "streams_in_use", "by_peer")

    def __init__(self, total: int, per_connection: int, streams: int) -> None:
        self.total = max(1, total)
        self.per_connection = max(1, per_connection)
        self.streams = max(1, streams)
        self.in_use = 0
        self.streams_in_use = 0
        self.by_peer: dict[str, int] = {}

    @classmethod
    def for_budget(cls, budget_bytes: int, message_bytes: int) -> ReceiveSlots:
        """The slots of a memory budget: one per ``message_bytes``, a quarter of them per
        connection, half for client streams waiting for a later message."""
        total = max(1, budget_bytes // max(1, message_bytes))
        return cls(total, max(1, total // 4), max(1, total // 2))

    def take(self, peer: str, later: bool) -> bool:
        """Take a slot for ``peer`` (the connection); False when none is free for it."""
        on_peer = self.by_peer.get(peer, 0)
        if self.in_use >= self.total or on_peer >= self.per_connection:
            return False
        if later and self.streams_in_use >= self.streams:
            return False
        self.in_use += 1
        self.by_peer[peer] = on_peer + 1
        if later:
            self.streams_in_use += 1
        return True

    def give(self, peer: str, later: bool) -> None:
        self.in_use -= 1
        _count_down(self.by_peer, peer)
        if later:
            self.streams_in_use -= 1


class CallTracker:
    """How many calls the application accepted, which are still running, and their limits:
    ``limit`` in the process, ``per_connection`` on one connection.

    Updated on the event loop thread only (no lock). ``tasks`` are the tasks serving the
    running calls: :meth:`cut` cancels them at the end of a stop's grace period, and the
    handlers answer those calls themselves (see :mod:`microframe.core.handlers`).
    """

    __slots__ = (
        "accepted", "active", "limit", "per_connection", "by_peer", "tasks", "cutting", "_idle",
        "closing",
    )

    def __init__(self, limit: int | None = None, per_connection: int | None = None) -> None:
        self.accepted = 0
        self.active = 0
        self.limit = limit if limit is not None else 1 << 62
        self.per_connection = per_connection if per_connection is not None else self.limit
        self.by_peer: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cutting = False
        self.closing = False
        self._idle: asyncio.Event | None = None

    def enter(self, peer: str, task: asyncio.Task[Any]) -> str | None:
        """Count the call ``task`` serves for ``peer`` (its connection) in; or return why it
        is refused (and count nothing): the server is stopping (``closing``, set by the
        drain: the caller answers UNAVAILABLE, the call never ran), or the process or the
        connection is at its limit (RESOURCE_EXHAUSTED)."""
        if self.closing:
            return "the server is stopping"
        if self.active >= self.limit:
            return f"the server is serving its limit of {self.limit} calls; try again later"
        on_peer = self.by_peer.get(peer, 0)
        if on_peer >= self.per_connection:
            return (
                f"this connection has {on_peer} calls running, the most one connection may have; "
                "try again later"
            )
        self.by_peer[peer] = on_peer + 1
        self.accepted += 1
        self.active += 1
        self.tasks.add(task)
        return None

    def leave(self, peer: str, task: asyncio.Task[Any]) -> None:
        self.active -= 1
        _count_down(self.by_peer, peer)
        self.tasks.discard(task)
        if self._idle is not None and not self.active:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is running."""
        if not self.active:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    def cut(self) -> int:
        """Cancel every running call's task (the handlers answer them); return how many."""
        self.cutting = True
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)


#: grpc's send limit is never below this: reflection answers a proto with all its imports in
#: one message (protovalidate's validate.proto alone is 68 KB), which a small
#: ``MAX_MESSAGE_BYTES`` meant for requests would refuse. The application's replies are held
#: to ``MAX_MESSAGE_BYTES`` by the method handlers.
SERVICE_REPLY_FLOOR = 4 << 20


@dataclass
class CallLimits:
    """Everything the method handlers enforce, resolved once from ``GRPC`` (see
    :meth:`microframe.core.server.ServerConfig.call_limits`)."""

    calls: CallTracker
    slots: ReceiveSlots
    watchdog: Watchdog
    receive_timeout: float = _GRPC["RECEIVE_TIMEOUT"]
    stream_idle_timeout: float | None = _GRPC["STREAM_IDLE_TIMEOUT"]
    send_timeout: float = _GRPC["SEND_TIMEOUT"]
    #: The largest reply an application method may send (``MAX_MESSAGE_BYTES``): enforced by
    #: the method handlers, since grpc's own send limit is kept at least
    #: :data:`SERVICE_REPLY_FLOOR` for the server's services (reflection, health).
    max_reply_bytes: int = _GRPC["MAX_MESSAGE_BYTES"]

    @classmethod
    def default(cls) -> CallLimits:
        """Limits of a server built without settings (tests, :func:`microframe.test.serve`):
        those of the default ``GRPC``, worked out as the server works them out."""
        from microframe.core.server import ServerConfig

        return ServerConfig().call_limits()
