"""``QueueHandler``: log records go through a bounded queue to a writer thread.

The seed's rule: "log calls and outputs talk through a channel; a failing log never breaks
business logic". A request's task only formats the message and puts the record on a queue
(``put_nowait``); a writer thread (the stdlib's ``QueueListener``) hands it to the real handlers
(console, file). When the writer cannot keep up and the queue is full, the record is dropped
and counted: ``microframe_log_dropped_total``, and a WARNING line every ``report_every`` seconds
saying how many were lost. Nothing waits on a disk or a terminal in the request path.

The writer is started on the first record (or by ``start()``) and stopped, after writing
everything queued, when the process exits or the handler is closed (``logging.shutdown()``).

In ``LOGGING``::

    "handlers": {
        "file": {"class": "logging.handlers.RotatingFileHandler", "filename": "app.log", ...},
        "queue": {
            "class": "microframe.contrib.logging.handlers.QueueHandler",
            "handlers": ["console", "file"],     # names of handlers defined in LOGGING
            "queue_size": 10000,
            "filters": ["request_fields"],       # runs in the request's task: keep it here
        },
    },

The stdlib's own ``QueueHandler`` blocks nothing either, but on a full queue it prints a
traceback to stderr for every record (``handleError``) and counts nothing; and Python 3.11's
``dictConfig`` cannot name the listener's handlers. This class adds those two things.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

_formatter = logging.Formatter()
_metric_lock = threading.Lock()
_dropped_metric: Any = None


def dropped_counter() -> Any:
    """``microframe_log_dropped_total``: log records dropped because the writer fell behind."""
    global _dropped_metric
    if _dropped_metric is None:
        with _metric_lock:
            if _dropped_metric is None:
                from prometheus_client import REGISTRY, Counter

                _dropped_metric = Counter(
                    "microframe_log_dropped",
                    "Log records dropped because the log writer could not keep up (queue full).",
                    registry=REGISTRY,
                )
    return _dropped_metric


def _handler_by_name(name: str) -> logging.Handler | None:
    get = getattr(logging, "getHandlerByName", None)  # Python >= 3.12
    if get is not None:
        return get(name)  # type: ignore[no-any-return]
    return logging._handlers.get(name)  # type: ignore[attr-defined,no-any-return]


class _Writer(logging.handlers.QueueListener):
    """The writer thread: reports drops between records, and stops without losing any."""

    def __init__(self, owner: QueueHandler, handlers: Sequence[logging.Handler]) -> None:
        super().__init__(owner.queue, *handlers, respect_handler_level=True)  # type: ignore[arg-type]
        self.owner = owner

    def handle(self, record: logging.LogRecord) -> None:
        owner = self.owner
        try:
            if owner.unreported and time.monotonic() - owner.reported_at >= owner.report_every:
                self.report_drops()
            super().handle(record)
        except Exception:  # a handler that fails must not stop the writer thread
            logging.Handler.handleError(owner, record)

    def report_drops(self) -> None:
        owner = self.owner
        count = owner.unreported
        if not count:
            return
        owner.unreported -= count
        since = time.monotonic() - owner.reported_at
        owner.reported_at = time.monotonic()
        record = logging.LogRecord(
            "microframe.logging", logging.WARNING, __file__, 0,
            "%d log record(s) dropped in the last %.0f s: the log writer could not keep up "
            "(queue of %d records; %d dropped since start)",
            (count, since, owner.queue_size, owner.dropped), None,
        )
        record.trace_id = record.service = record.method = "-"
        super().handle(record)

    def enqueue_sentinel(self) -> None:
        # The stdlib puts without waiting, which fails on a full queue; the writer is draining
        # it, so waiting (boundedly) is safe here.
        try:
            self.queue.put(self._sentinel, timeout=10)  # type: ignore[attr-defined]
        except queue.Full:
            pass


class QueueHandler(logging.handlers.QueueHandler):
    """Hand records to a writer thread through a queue of ``queue_size``; drop when it is full.

    ``handlers`` are the handlers the writer writes to: ``logging.Handler`` objects, or the
    names of handlers configured in ``LOGGING``.
    """

    def __init__(
        self,
        handlers: Sequence[str | logging.Handler] = (),
        queue_size: int = 10000,
        report_every: float = 10.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        super().__init__(queue.Queue(queue_size))
        self.queue_size = queue_size
        self.report_every = report_every
        self.targets = list(handlers)
        self.dropped = 0
        self.unreported = 0
        self.reported_at = time.monotonic()
        self.writer: _Writer | None = None
        self._start_lock = threading.Lock()

    # -- the writer ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (done by the first record otherwise)."""
        with self._start_lock:
            if self.writer is not None:
                return
            handlers: list[logging.Handler] = []
            for target in self.targets:
                handler = _handler_by_name(target) if isinstance(target, str) else target
                if handler is None:
                    raise ValueError(f"QueueHandler: no handler named {target!r} is configured")
                handlers.append(handler)
            self.writer = _Writer(self, handlers)
            self.writer.start()
            atexit.register(self.stop)

    def stop(self) -> None:
        """Write everything queued, then stop the writer thread."""
        with self._start_lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop()
            writer.report_drops()
            for handler in writer.handlers:
                try:
                    handler.flush()
                except Exception:  # a log that cannot be flushed never breaks the process
                    pass

    def flush(self) -> None:
        """Wait (up to 5 s) until the writer has taken every queued record."""
        deadline = time.monotonic() + 5
        while self.writer is not None and not self.queue.empty() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.005)
        if self.writer is not None:
            for handler in self.writer.handlers:
                handler.flush()

    def close(self) -> None:
        self.stop()
        super().close()

    # -- the request side ----------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if self.writer is None:
            self.start()
        try:
            self.enqueue(self.prepare(record))
        except Exception:
            self.handleError(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Merge the arguments into the message and the traceback into text, in place (the
        objects they refer to may change or die before the writer gets to the record)."""
        record.message = record.getMessage()
        record.msg = record.message
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = _formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self.unreported += 1
            try:
                dropped_counter().inc()
            except Exception:
                pass
