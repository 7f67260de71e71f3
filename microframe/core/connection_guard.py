"""The limits of ``GRPC`` on connections, applied from outside a transport that has none.

pygrpc-native (the native transport) takes every connection its listener accepts, gives a
connection 120 s to send its HTTP/2 preface, and holds a request message until it is whole,
however slowly it comes: its front has no option for any of it, and the calls reach Python
only once their message is complete. grpc.aio applies ``MAX_CONNECTIONS``,
``HANDSHAKE_TIMEOUT``, ``RECEIVE_TIMEOUT`` and ``RECEIVE_BUFFER_BYTES`` itself
(:mod:`microframe.core.limits`). :class:`ConnectionGuard` applies them to the native
transport's connections from the one place that sees them all, the kernel, and closes the
connections that break them:

- it lists the process's own TCP sockets accepted on the server's port (``/proc/self/fd``;
  ``psutil``, made for this, parses the whole network namespace's tables on every call, 10 ms
  where this takes 0.3) and reads each one's ``TCP_INFO``: the bytes it has received and
  sent;
- :class:`RequestLedger` counts what the application was handed from each connection (each
  request message, its metadata and a margin for its framing);
- bytes a connection received more than ``RECEIVE_TIMEOUT`` ago that are still not part of a
  request the application was handed are a request that did not arrive in time (the
  transport holds it, or holds open streams that never sent one): the connection is closed;
  so is one whose undelivered bytes exceed its share of ``RECEIVE_BUFFER_BYTES`` (a quarter,
  as the receive slots are shared on grpc.aio), and, while all of them together exceed
  ``RECEIVE_BUFFER_BYTES``, the one holding most;
- a connection that has not sent the 24 bytes of the HTTP/2 preface ``HANDSHAKE_TIMEOUT``
  after it was established is closed, and the newest connections past ``MAX_CONNECTIONS``
  (bounded by the open files limit) at once;
- at the cap, the listening socket stops letting new connections in (a socket filter drops
  their SYNs, :func:`pause_accepting`) until some have gone: the front accepts as long as it
  has descriptors, and a burst between two scans would otherwise take those the process needs
  for its own files. Its queue of established connections is widened to the system's maximum
  on the way (:func:`widen_backlog`).

A connection is closed with ``shutdown()`` through a duplicate descriptor, after checking the
descriptor still is the socket that was read (its inode): the transport sees its peer go away
and frees what the connection held; its clients see the connection end (UNAVAILABLE). The
scan runs in a thread of its own every :data:`SCAN_INTERVAL` seconds, less often when there
are so many connections that it would take more than :data:`SCAN_SHARE` of a core; between
scans the process's descriptors are counted every :data:`WATCH_INTERVAL` (one system call) to
pause the listener in time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from microframe.utils.resources import connections_within_files_limit

__all__ = ["ConnectionGuard", "GuardLimits", "RequestLedger", "accepted_connections"]

logger = logging.getLogger("microframe.server")

#: Seconds between two scans of the connections (at least).
SCAN_INTERVAL = 0.1
#: Seconds between two counts of the process's descriptors (one system call each), which
#: stop the listener letting connections in at the cap (ConnectionGuard.admit).
WATCH_INTERVAL = 0.01
#: The share of a core the scans may take: with many connections they run less often, but
#: at least every MAX_SCAN_INTERVAL seconds.
SCAN_SHARE = 0.03
MAX_SCAN_INTERVAL = 1.0
#: Bytes of the HTTP/2 client preface: a connection that has received fewer has not started.
PREFACE_BYTES = 24
#: Bytes credited to a connection for each request it was handed beyond its message and
#: metadata: its HEADERS and DATA frames, the gRPC message prefix, HPACK's literals.
CALL_OVERHEAD = 512
#: Bytes credited to every connection each second for the frames that carry no request
#: (PING, its ACK, SETTINGS, RST_STREAM, GOAWAY).
IDLE_ALLOWANCE = 16
#: The fraction of what the server sent a connection credited to it: the client's
#: WINDOW_UPDATE frames (and BDP pings) for the replies it reads.
SENT_ALLOWANCE = 1 / 128
#: Bytes received more than RECEIVE_TIMEOUT ago a connection may have that are not part of a
#: request handed to the application: framing the allowances above do not cover.
STALL_SLACK = 2048

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, since Linux 4.1.
_TCP_INFO_SIZE = 136
_BYTES_ACKED = 120
_BYTES_RECEIVED = 128
_LAST_DATA_RECV = 52  # tcpi_last_data_recv, in ms


class RequestLedger:
    """What the application was handed from each connection, in bytes: written on the event
    loop (one dict update a call), read by the guard's thread.

    Keys are the transport's peer strings (``ipv4:127.0.0.1:5555``). Requests that reach the
    application through another path than the connection they came on (pygrpc-native's
    fallback server, behind a Unix socket, for client streams) are counted under
    :attr:`elsewhere`: the guard credits them to whichever connection would otherwise be
    closed, once."""

    __slots__ = ("by_peer", "elsewhere")

    def __init__(self) -> None:
        self.by_peer: dict[str, int] = {}
        self.elsewhere = 0

    def took(self, peer: str, size: int, metadata: Any) -> None:
        """Count a request message of ``size`` bytes handed over whole on ``peer``'s
        connection, with its metadata (pairs of str/bytes)."""
        size += CALL_OVERHEAD
        for key, value in metadata:
            size += len(key) + len(value)
        by_peer = self.by_peer
        by_peer[peer] = by_peer.get(peer, 0) + size

    def took_elsewhere(self, size: int) -> None:
        """Count a request message of ``size`` bytes that reached the application through
        another path."""
        self.elsewhere += size + CALL_OVERHEAD


@dataclass(frozen=True)
class GuardLimits:
    """The limits the guard applies (from ``ServerConfig``); None or 0: not applied."""

    max_connections: int | None
    handshake_timeout: float | None
    receive_timeout: float | None
    receive_buffer_bytes: int | None

    @classmethod
    def from_config(cls, config: Any) -> GuardLimits:
        return cls(
            max_connections=config.max_connections or None,
            handshake_timeout=config.handshake_timeout or None,
            receive_timeout=config.receive_timeout or None,
            receive_buffer_bytes=config.receive_buffer_bytes or None,
        )


@dataclass
class Connection:
    """One accepted connection as the guard last read it."""

    fd: int
    inode: int
    peer: str
    received: int = 0
    sent: int = 0
    #: When the guard first saw it (monotonic).
    seen: float = 0.0
    #: Bytes received that are accounted for: requests handed over, allowances (never more
    #: than ``received``).
    credited: int = 0
    #: The ledger's count for its peer at the last scan.
    taken: int = 0
    #: (time, bytes received) of the scans within the last RECEIVE_TIMEOUT, and one before.
    history: deque[tuple[float, int]] = field(default_factory=deque)
    last: float = 0.0
    #: Seconds since data last arrived on it (since it was established, when none has).
    quiet: float = 0.0

    @property
    def held(self) -> int:
        """Bytes received that are not yet part of a request handed to the application."""
        return self.received - self.credited


def _peer_string(address: tuple[Any, ...], family: int) -> str:
    if family == socket.AF_INET6:
        return f"ipv6:[{address[0]}]:{address[1]}"
    return f"ipv4:{address[0]}:{address[1]}"


def _tcp_counts(sock: socket.socket) -> tuple[int, int, float]:
    """Bytes received, bytes sent, and seconds since data last arrived (since the
    connection was established, when none has)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    if len(info) < _TCP_INFO_SIZE:  # a kernel older than 4.1: nothing to count
        return 0, 0, 0.0
    (received,) = struct.unpack_from("Q", info, _BYTES_RECEIVED)
    (sent,) = struct.unpack_from("Q", info, _BYTES_ACKED)
    (quiet_ms,) = struct.unpack_from("I", info, _LAST_DATA_RECV)
    return received, sent, quiet_ms / 1000


def _descriptors() -> Iterable[int]:
    """The process's file descriptors: ``/proc/self/fd``, or, when no descriptor is free to
    read it (the transport took them all: the moment the guard matters most), every number
    below the open files limit."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return range(min(soft, 1 << 20))


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """The socket of descriptor ``fd``, without a descriptor of its own (none may be free):
    detached, never closed, when done."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


#: What ``accepted_connections``'s cache records for the server's listening socket.
_LISTENER = "listener"


def accepted_connections(
    port: int, known: dict[int, str | None]
) -> tuple[list[tuple[int, int, str, int, int, float]], tuple[int, int] | None]:
    """The TCP connections this process accepted on ``port`` (``(fd, inode, peer, bytes
    received, bytes sent, seconds since data last arrived)``), and its socket listening on
    ``port`` (``(fd, inode)``, None when not found). ``known`` caches, by socket inode, the
    peer of a connection of ``port`` (None: another socket), so that each socket's addresses
    are read once."""
    found: list[tuple[int, int, str, int, int, float]] = []
    listener: tuple[int, int] | None = None
    live: set[int] = set()
    for fd in _descriptors():
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode):
            continue
        inode = st.st_ino
        live.add(inode)
        peer = known.get(inode, "")
        if peer is None:
            continue
        if peer == _LISTENER:
            listener = (fd, inode)
            continue
        try:
            with _borrowed(fd) as sock:
                if peer == "":
                    peer = None
                    if sock.type == socket.SOCK_STREAM and sock.family in (
                        socket.AF_INET, socket.AF_INET6
                    ) and sock.getsockname()[1] == port:
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                            peer = _LISTENER
                        else:
                            try:
                                peer = _peer_string(sock.getpeername(), sock.family)
                            except OSError:  # not connected (any more)
                                peer = None
                    if os.fstat(fd).st_ino != inode:  # closed and reused meanwhile
                        continue
                    known[inode] = peer
                    if peer == _LISTENER:
                        listener = (fd, inode)
                        continue
                    if peer is None:
                        continue
                received, sent, quiet = _tcp_counts(sock)
            if os.fstat(fd).st_ino != inode:
                continue
        except OSError:
            continue
        found.append((fd, inode, peer, received, sent, quiet))
    for inode in [i for i in known if i not in live]:
        del known[inode]
    return found, listener


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# A classic BPF program dropping the segments with the SYN flag: attached to a listening
# socket, it drops the SYNs of new connections (their clients send them again, after one
# second, then three...) and lets the handshakes already under way finish (their last ACK),
# so that no client believes itself connected to a server that is not letting it in; the
# connections already accepted have sockets of their own, which it does not touch.
# The segment starts at its TCP header, whose byte 13 holds the flags.
_DROP_SYN = (_SockFilter * 4)(
    _SockFilter(0x30, 0, 0, 13),  # ldb [13]: the flags
    _SockFilter(0x45, 1, 0, 0x02),  # jset #SYN: to the drop, else on
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret: the whole segment
    _SockFilter(0x06, 0, 0, 0),  # ret 0: dropped
)
_DROP_SYN_PROGRAM = bytes(_SockFprog(len(_DROP_SYN), _DROP_SYN))
_SO_ATTACH_FILTER, _SO_DETACH_FILTER = 26, 27


def pause_accepting(fd: int) -> bool:
    """Make the listening socket ``fd`` let no new connection in (a socket filter dropping
    their SYNs); the front's own accept loop then finds none beyond the handshakes already
    under way (the listener's backlog at most). False when it cannot."""
    try:
        with _borrowed(fd) as sock:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _DROP_SYN_PROGRAM)
        return True
    except OSError as err:
        logger.warning("cannot stop accepting connections: %s", err)
        return False


def resume_accepting(fd: int) -> None:
    """Let new connections in again (:func:`pause_accepting` undone)."""
    try:
        with _borrowed(fd) as sock:
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
    except OSError:
        pass


def widen_backlog(fd: int) -> None:
    """Let the listening socket ``fd`` queue as many established connections as the system
    allows (``net.core.somaxconn``), as grpc core's listeners do; pygrpc-native's queue 128.
    A short queue overflows when many clients connect in the same instant (as those told to
    wait by :func:`pause_accepting` all try again together): the kernel then drops the last
    ACK of their handshakes, and they believe themselves connected to a server that has not
    taken them, for seconds."""
    try:
        with _borrowed(fd) as sock:
            sock.listen(socket.SOMAXCONN)
    except OSError as err:
        logger.debug("cannot widen the listener's queue: %s", err)


def open_descriptors() -> int:
    """How many file descriptors the process has open: the size Linux (6.2 and later) reports
    for ``/proc/self/fd``, one system call; else counted."""
    size = os.stat("/proc/self/fd").st_size
    return size if size > 0 else len(os.listdir("/proc/self/fd")) - 1


def shut_down(fd: int, inode: int) -> bool:
    """Shut down the socket ``fd`` both ways, if it still is socket ``inode``."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if os.fstat(sock.fileno()).st_ino != inode:
                return False
            sock.shutdown(socket.SHUT_RDWR)
            return True
    except OSError as err:
        if err.errno != errno.EMFILE:
            return False
    try:  # no descriptor free for a duplicate
        if os.fstat(fd).st_ino != inode:
            return False
        with _borrowed(fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False


class ConnectionGuard:
    """Applies :class:`GuardLimits` to the connections accepted on ``port`` (see the module's
    docstring); :meth:`scan` is one pass, :meth:`start` runs them in a thread."""

    def __init__(self, port: int, limits: GuardLimits, ledger: RequestLedger) -> None:
        self.port = port
        self.limits = limits
        self.ledger = ledger
        self.connections: dict[int, Connection] = {}  # by inode
        self.closed: dict[str, int] = {}  # why -> how many, since start
        self._known: dict[int, str | None] = {}
        self._shut: set[int] = set()
        self._elsewhere_seen = 0
        self._elsewhere: deque[tuple[float, int]] = deque()
        #: The server's listening socket (fd, inode), once a scan has found it.
        self.listener: tuple[int, int] | None = None
        #: The connections the process may hold (MAX_CONNECTIONS within the open files).
        self.cap: int | None = None
        #: Whether the listener lets no new connection in (``admit``), and how often it was.
        self.paused = False
        self.pauses = 0
        self._live_at_scan = 0
        self._opened_at_scan = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- The thread. ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="microframe-connection-guard", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.paused and self.listener is not None:
            resume_accepting(self.listener[0])
            self.paused = False

    def _run(self) -> None:
        next_scan = time.monotonic()
        while not self._stop.wait(WATCH_INTERVAL):
            now = time.monotonic()
            try:
                if now >= next_scan:
                    # Its own CPU time, not the time it took: on a busy machine a scan waits
                    # for the GIL and the cores, and the limits must not be applied later.
                    cpu = time.thread_time()
                    self.scan(now)
                    took = time.thread_time() - cpu
                    next_scan = now + min(MAX_SCAN_INTERVAL, max(SCAN_INTERVAL, took / SCAN_SHARE))
                self.admit()
            except Exception:  # a guard that stops guarding must say so, once
                logger.exception("the connection guard failed; connections are unguarded")
                return

    def admit(self) -> None:
        """Stop the listener letting connections in while the process holds ``cap`` of them
        (counted at the last scan, plus the descriptors opened since), let them in again
        below: the front accepts as long as it has descriptors, and without this a burst of
        connections between two scans could take the last ones the process needs for its own
        files."""
        if self.listener is None or not self.cap:
            return
        opened = open_descriptors()
        estimate = self._live_at_scan + max(0, opened - self._opened_at_scan)
        if estimate >= self.cap and not self.paused:
            if pause_accepting(self.listener[0]):
                self.paused = True
                self.pauses += 1
                logger.warning(
                    'GRPC["MAX_CONNECTIONS"] reached (%d connections): new connections wait '
                    "until some close", estimate,
                )
        elif estimate < self.cap and self.paused:
            resume_accepting(self.listener[0])
            self.paused = False
            logger.info("accepting connections again (%d open)", estimate)

    # -- One pass. -----------------------------------------------------------------------

    def scan(self, now: float) -> list[tuple[Connection, str]]:
        """Read the connections, close those that break a limit; return them and why."""
        limits = self.limits
        previous = self.connections
        current: dict[int, Connection] = {}
        by_peer = self.ledger.by_peer
        shut: set[int] = set()
        connections, listener = accepted_connections(self.port, self._known)
        if listener is not None and listener != self.listener:
            widen_backlog(listener[0])
        self.listener = listener
        opened = open_descriptors()
        self.cap = (
            connections_within_files_limit(limits.max_connections)
            if limits.max_connections else None
        )
        for fd, inode, peer, received, sent, quiet in connections:
            if inode in self._shut:  # shut down, not yet closed by the transport
                shut.add(inode)
                continue
            conn = previous.get(inode)
            if conn is None or conn.peer != peer:
                conn = Connection(fd, inode, peer, seen=now, last=now, taken=by_peer.get(peer, 0))
            conn.fd = fd
            taken = by_peer.get(peer, 0)
            credit = (
                taken - conn.taken
                + int((sent - conn.sent) * SENT_ALLOWANCE)
                + int((now - conn.last) * IDLE_ALLOWANCE)
            )
            conn.taken, conn.received, conn.sent, conn.last = taken, received, sent, now
            conn.quiet = quiet
            conn.credited = min(conn.credited + max(0, credit), received)
            conn.history.append((now, received))
            if not limits.receive_timeout:  # nothing reads it: keep the last scan only
                while len(conn.history) > 1:
                    conn.history.popleft()
            current[inode] = conn
        for inode, gone in previous.items():
            if inode not in current:
                by_peer.pop(gone.peer, None)
        self.connections = current
        self._shut = shut
        self._collect_elsewhere(now)

        doomed: list[tuple[Connection, str]] = []
        chosen: set[int] = set()

        def close(conn: Connection, why: str) -> None:
            if conn.inode not in chosen:
                chosen.add(conn.inode)
                doomed.append((conn, why))

        if self.cap:
            cap = self.cap
            if len(current) > cap:
                # Socket inodes are numbered as sockets are made: the newer of two
                # connections first seen in the same scan has the higher one.
                newest = sorted(current.values(), key=lambda c: (c.seen, c.inode), reverse=True)
                for conn in newest[: len(current) - cap]:
                    close(conn, "MAX_CONNECTIONS")
        if limits.handshake_timeout:
            for conn in current.values():
                # Its age: since the guard saw it, or, when it waited in the listener's
                # queue before the transport took it, since the kernel established it.
                if conn.received < PREFACE_BYTES and max(
                    now - conn.seen, conn.quiet
                ) >= limits.handshake_timeout:
                    close(conn, "HANDSHAKE_TIMEOUT")
        # Requests handed over elsewhere (client streams) are credited to the connections
        # that need the least of them first: a client stream's connection is short of what
        # it sent in a scan or two, one holding what it never finishes, of all of it.
        if limits.receive_timeout:
            horizon = now - limits.receive_timeout
            late: list[tuple[int, Connection]] = []
            for conn in current.values():
                history = conn.history
                while len(history) > 1 and history[1][0] <= horizon:
                    history.popleft()
                if history[0][0] <= horizon and history[0][1] - conn.credited > STALL_SLACK:
                    late.append((history[0][1] - conn.credited - STALL_SLACK, conn))
            for excess, conn in sorted(late, key=lambda item: item[0]):
                if not self._forgive(conn, excess):
                    close(conn, "RECEIVE_TIMEOUT")
        budget = limits.receive_buffer_bytes
        if budget:
            share = budget // 4
            over = sorted((
                (c.held - share, c) for c in current.values()
                if c.held > share and c.inode not in chosen
            ), key=lambda item: item[0])
            for excess, conn in over:
                if not self._forgive(conn, excess):
                    close(conn, "RECEIVE_BUFFER_BYTES")
            holding = sorted(
                (c for c in current.values() if c.inode not in chosen),
                key=lambda c: c.held, reverse=True,
            )
            total = sum(c.held for c in holding)
            for conn in holding:
                if total <= budget:
                    break
                before = conn.held
                if self._forgive(conn, min(before, total - budget)):
                    total -= before - conn.held
                else:
                    close(conn, "RECEIVE_BUFFER_BYTES")
                    total -= before

        for conn, why in doomed:
            if shut_down(conn.fd, conn.inode):
                self.closed[why] = self.closed.get(why, 0) + 1
                del current[conn.inode]
                self._shut.add(conn.inode)
                by_peer.pop(conn.peer, None)
        self._live_at_scan, self._opened_at_scan = len(current), opened
        if doomed:
            reasons: dict[str, list[str]] = {}
            for conn, why in doomed:
                reasons.setdefault(why, []).append(f"{conn.peer} ({conn.held} bytes held)")
            for why, peers in reasons.items():
                logger.warning(
                    'closed %d connection(s) past GRPC["%s"]: %s', len(peers), why,
                    ", ".join(peers[:5]) + (" ..." if len(peers) > 5 else ""),
                )
        return doomed

    def _collect_elsewhere(self, now: float) -> None:
        """Requests handed over through another path since the last scan: credit that lasts
        one RECEIVE_TIMEOUT (or a second)."""
        total = self.ledger.elsewhere
        if total > self._elsewhere_seen:
            self._elsewhere.append((now, total - self._elsewhere_seen))
            self._elsewhere_seen = total
        horizon = now - (self.limits.receive_timeout or 1.0) * 2
        while self._elsewhere and self._elsewhere[0][0] < horizon:
            self._elsewhere.popleft()

    def _forgive(self, conn: Connection, excess: int) -> bool:
        """Cover ``excess`` bytes of ``conn`` with requests handed over elsewhere, if there
        are enough of them (spent once)."""
        available = sum(amount for _, amount in self._elsewhere)
        if available < excess:
            return False
        left = excess
        while left > 0 and self._elsewhere:
            when, amount = self._elsewhere[0]
            if amount > left:
                self._elsewhere[0] = (when, amount - left)
                left = 0
            else:
                self._elsewhere.popleft()
                left -= amount
        conn.credited = min(conn.received, conn.credited + excess)
        return True
