"""``QueueHandler``: log records go through a bounded queue to a writer thread, in batches.

The seed's rule: "log calls and outputs talk through a channel; a failing log never breaks
business logic". A request's task only merges the message's arguments and appends the record
to a queue; a writer thread hands the records to the real handlers (console, file). When the
writer cannot keep up and the queue is full, the record is dropped and counted:
``microframe_log_dropped_total``, and a WARNING line every ``report_every`` seconds says how
many were lost. Nothing waits on a disk or a terminal in the request path.

The writer wakes every ``flush_interval`` seconds (or sooner when the queue fills up), writes
everything queued, then flushes its handlers once. The console and file handlers of this
module buffer what they format until that flush: one ``write`` system call per handler per
batch instead of one per line. That is why this is not the stdlib's ``QueueHandler`` and
``QueueListener``: the listener wakes up (a thread switch, a GIL hand-over) for every record,
and its file handlers flush every line (the size-rotating one also formats every record twice
and asks the file system for its size); together they cost a busy service half its
throughput when every call writes an access line. Records are also dropped and counted rather
than reported one traceback at a time on stderr, and Python 3.11's ``dictConfig`` cannot name a
listener's handlers.

The writer starts with the first record (or ``start()``) and stops, after writing everything
queued, when the process exits or the handler is closed (``logging.shutdown()``).

In ``LOGGING``::

    "handlers": {
        "file": {"class": "microframe.contrib.logging.handlers.RotatingFileHandler",
                 "filename": "app.log", "maxBytes": 100_000_000, "backupCount": 7},
        "queue": {
            "class": "microframe.contrib.logging.handlers.QueueHandler",
            "handlers": ["console", "file"],     # names of handlers defined in LOGGING
            "queue_size": 10000,
            "filters": ["request_fields"],       # runs in the request's task: keep it here
        },
    },

Any handler can be behind the queue; the buffered ones of this module are the fast ones.
"""

from __future__ import annotations

import atexit
import collections
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from microframe.conf import global_settings
from microframe.utils.once import once

_formatter = logging.Formatter()
#: The defaults of ``LOG`` (``global_settings.LOG``).
_LOG: dict[str, Any] = global_settings.LOG


@once
def dropped_counter() -> Any:
    """``microframe_log_dropped_total``: log records dropped because the writer fell behind."""
    from prometheus_client import REGISTRY, Counter

    return Counter(
        "microframe_log_dropped",
        "Log records dropped because the log writer could not keep up (queue full).",
        registry=REGISTRY,
    )


def _handler_by_name(name: str) -> logging.Handler | None:
    get = getattr(logging, "getHandlerByName", None)  # Python >= 3.12
    if get is not None:
        return get(name)  # type: ignore[no-any-return]
    return logging._handlers.get(name)  # type: ignore[attr-defined,no-any-return]


class QueueHandler(logging.Handler):
    """Hand records to a writer thread through a queue of ``queue_size``; drop when it is full.

    ``handlers`` are the handlers the writer writes to: ``logging.Handler`` objects, or the
    names of handlers configured in ``LOGGING``.
    """

    def __init__(
        self,
        handlers: Sequence[str | logging.Handler] = (),
        queue_size: int = _LOG["QUEUE_SIZE"],
        flush_interval: float = 0.05,
        report_every: float = 10.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        super().__init__()
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.report_every = report_every
        # The handlers named here are resolved at once, and held: logging keeps its named
        # handlers only through weak references, and these are attached to no logger, so a
        # garbage collection before start() would lose them. A name configured later (not
        # the case under dictConfig, which configures handlers in name order, ``queue`` last)
        # is resolved by start().
        self.targets = [
            (_handler_by_name(target) or target) if isinstance(target, str) else target
            for target in handlers
        ]
        self.handlers: list[logging.Handler] = []
        self.dropped = 0
        self.unreported = 0
        self.reported_at = time.monotonic()
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._high_water = max(1, queue_size // 2)
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._batches = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- the writer ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (done by the first record otherwise)."""
        with self._start_lock:
            if self._thread is not None:
                return
            handlers: list[logging.Handler] = []
            for target in self.targets:
                handler = _handler_by_name(target) if isinstance(target, str) else target
                if handler is None:
                    raise ValueError(f"QueueHandler: no handler named {target!r} is configured")
                if isinstance(handler, BufferedHandler):
                    handler.buffering = True
                handlers.append(handler)
            self.handlers = handlers
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="microframe-log-writer", daemon=True
            )
            self._thread.start()
            atexit.register(self.stop)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._write_batch()
        self._write_batch()

    def _write_batch(self) -> None:
        records = self._records
        wrote = False
        while records:
            record = records.popleft()
            wrote = True
            for handler in self.handlers:
                if record.levelno >= handler.level:
                    try:
                        handler.handle(record)
                    except Exception:  # a handler that fails must not stop the writer
                        logging.Handler.handleError(self, record)
        report_due = time.monotonic() - self.reported_at >= self.report_every
        if self.unreported and (self._stopping or report_due):
            self._report_drops()
            wrote = True
        if wrote:
            for handler in self.handlers:
                try:
                    handler.flush()
                except Exception:
                    pass
        with self._flushed:
            self._batches += 1
            self._flushed.notify_all()

    def _report_drops(self) -> None:
        count = self.unreported
        self.unreported -= count
        now = time.monotonic()
        since, self.reported_at = now - self.reported_at, now
        record = logging.LogRecord(
            "microframe.logging", logging.WARNING, __file__, 0,
            f"{count} log record(s) dropped in the last {since:.0f} s: the log writer could not "
            f"keep up (queue of {self.queue_size} records; {self.dropped} dropped since start)",
            None, None,
        )
        record.trace_id = record.service = record.method = "-"
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def flush(self) -> None:
        """Wait (up to 5 s) until the writer has written everything queued so far."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return
        with self._flushed:
            target = self._batches + 2  # the batch running now may have started before the call
            self._wake.set()
            deadline = time.monotonic() + 5
            while self._batches < target and thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._flushed.wait(left)
                self._wake.set()

    def stop(self) -> None:
        """Write everything queued, then stop the writer thread."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(10)
            for handler in self.handlers:
                if isinstance(handler, BufferedHandler):
                    handler.buffering = False

    def close(self) -> None:
        self.stop()
        super().close()

    # -- the request side ----------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        # No handler lock: appending to a deque is thread-safe.
        if self.filter(record):
            self.emit(record)
            return record
        return False

    def emit(self, record: logging.LogRecord) -> None:
        if self._thread is None:
            self.start()
        try:
            self.prepare(record)
        except Exception:
            self.handleError(record)
            return
        records = self._records
        if len(records) >= self.queue_size:
            self.dropped += 1
            self.unreported += 1
            try:
                dropped_counter().inc()
            except Exception:
                pass
            return
        records.append(record)
        if len(records) == self._high_water:
            self._wake.set()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Merge the arguments into the message and the traceback into text, in place (the
        objects they refer to may change or die before the writer gets to the record)."""
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _formatter.formatException(record.exc_info)
            record.exc_info = None
        return record


class BufferedHandler(logging.Handler):
    """A handler that, behind a :class:`QueueHandler` (``buffering`` true), keeps the lines it
    formats until the writer's ``flush()`` and writes them at once; on its own it writes every
    line as it comes, like the stdlib's."""

    buffering = False
    terminator = "\n"

    def _init_buffer(self) -> None:
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if not self.buffering:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            pending, self._pending = self._pending, []
            if pending:
                self.write_lines(pending)
            self.flush_stream()
        except Exception:
            self._report_failure()
        finally:
            self.release()

    def write_lines(self, lines: list[str]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def flush_stream(self) -> None:
        pass

    def _report_failure(self) -> None:
        if logging.raiseExceptions:
            import traceback

            traceback.print_exc(file=sys.__stderr__)


class ConsoleHandler(BufferedHandler):
    """Lines to a stream (``sys.stderr`` unless ``stream`` is given), buffered by batch."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream
        self._init_buffer()

    def _stream(self) -> Any:
        return self.stream if self.stream is not None else sys.stderr

    def write_lines(self, lines: list[str]) -> None:
        self._stream().write("".join(lines))

    def flush_stream(self) -> None:
        stream = self._stream()
        if hasattr(stream, "flush"):
            stream.flush()


class RotatingFileHandler(BufferedHandler, logging.handlers.RotatingFileHandler):
    """The stdlib's size-rotating file handler (``maxBytes``, ``backupCount``), buffered by
    batch, keeping the file's size in memory instead of formatting each record twice and
    asking the file system."""

    def __init__(self, filename: str, mode: str = "a", maxBytes: int = 0,  # noqa: N803
                 backupCount: int = 0, encoding: str | None = "utf-8",  # noqa: N803
                 delay: bool = True, errors: str | None = None) -> None:
        logging.handlers.RotatingFileHandler.__init__(
            self, filename, mode, maxBytes, backupCount,
            encoding=encoding, delay=delay, errors=errors,
        )
        self._init_buffer()
        self._size = -1

    def write_lines(self, lines: list[str]) -> None:
        if self.stream is None:
            self.stream = self._open()
            self._size = -1
        if self._size < 0:
            self.stream.seek(0, os.SEEK_END)
            self._size = self.stream.tell()
        limit = self.maxBytes
        if limit <= 0:
            self.stream.write("".join(lines))
            return
        chunk: list[str] = []
        size = self._size
        for line in lines:
            length = len(line.encode("utf-8")) if not line.isascii() else len(line)
            if size + length > limit and size > 0:
                if chunk:
                    self.stream.write("".join(chunk))
                    chunk = []
                self.doRollover()
                size = 0
            chunk.append(line)
            size += length
        if chunk:
            self.stream.write("".join(chunk))
        self._size = size

    def flush_stream(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def doRollover(self) -> None:  # noqa: N802
        if self.stream is not None:
            self.stream.flush()
        super().doRollover()
        if self.stream is None:
            self.stream = self._open()
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        BufferedHandler.emit(self, record)

    def flush(self) -> None:
        BufferedHandler.flush(self)


class TimedRotatingFileHandler(BufferedHandler, logging.handlers.TimedRotatingFileHandler):
    """The stdlib's time-rotating file handler (``when``, ``interval``, ``backupCount``),
    buffered by batch; the time to roll over is checked once per batch."""

    def __init__(self, filename: str, when: str = "h", interval: int = 1, backupCount: int = 0,  # noqa: N803
                 encoding: str | None = "utf-8", delay: bool = True, utc: bool = False,
                 atTime: Any = None, errors: str | None = None) -> None:  # noqa: N803
        logging.handlers.TimedRotatingFileHandler.__init__(
            self, filename, when, interval, backupCount, encoding=encoding, delay=delay, utc=utc,
            atTime=atTime, errors=errors,
        )
        self._init_buffer()

    def write_lines(self, lines: list[str]) -> None:
        if int(time.time()) >= self.rolloverAt:
            self.doRollover()
        if self.stream is None:
            self.stream = self._open()
        self.stream.write("".join(lines))

    def flush_stream(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        BufferedHandler.emit(self, record)

    def flush(self) -> None:
        BufferedHandler.flush(self)
