"""The line formats: :class:`TextFormatter` and :class:`JsonFormatter`.

Both cache what a busy service would otherwise compute again and again: the time of day is
formatted once per second, and a record's line once per formatter (the console and the file
share the formatter, and so the work).

A JSON line is ``json.dumps`` of the record's standard fields, the request fields and any
``extra`` given to the call; this is the whole of it, so it is written here rather than taken
from python-json-logger (whose field-selection syntax we would not use).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: The text format: time, level, pid, logger, then the request (trace id, service, method).
TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(process)d %(name)s [%(trace_id)s %(service)s %(method)s] "
    "%(message)s"
)

#: LogRecord attributes that are not ``extra`` fields.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "trace_id", "service", "method", "taskName"}
)


class _CachingFormatter(logging.Formatter):
    _second = -1
    _second_text = ""
    _cache_key = "_microframe_line"

    def _seconds_text(self, created: float) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = self._seconds_text(record.created)
            self._second = second
        return self._second_text % int(record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get(self._cache_key)
        if cached is not None and cached[0] is self:
            return cached[1]  # type: ignore[no-any-return]
        line = self.format_record(record)
        record.__dict__[self._cache_key] = (self, line)
        return line

    def format_record(self, record: logging.LogRecord) -> str:
        return super().format(record)


class TextFormatter(_CachingFormatter):
    """``logging.Formatter`` with :data:`TEXT_FORMAT` by default (``2026-11-25 10:00:00,123``)."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: Any = "%",
                 format: str | None = None, **kwargs: Any) -> None:  # noqa: A002
        # ``format`` as in a LOGGING formatter entry: {"()": ..., "format": "..."}
        fmt = fmt or format
        super().__init__(fmt or TEXT_FORMAT, datefmt, style, **kwargs)
        # The default format is written as an f-string: the same line at a third of the cost.
        self._default = (fmt or TEXT_FORMAT) == TEXT_FORMAT and style == "%" and datefmt is None

    def format_record(self, record: logging.LogRecord) -> str:
        if not self._default:
            return super().format_record(record)
        record.message = message = record.getMessage()
        get = record.__dict__.get
        line = (
            f"{self.formatTime(record)} {record.levelname} {record.process} {record.name} "
            f"[{get('trace_id', '-')} {get('service', '-')} {get('method', '-')}] {message}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line

    def _seconds_text(self, created: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created)) + ",%03d"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return super().formatTime(record, datefmt or self.datefmt)


class JsonFormatter(_CachingFormatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``,
    ``message``, ``trace_id``, ``service``, ``method``, ``exc_info`` (the traceback, when there
    is one) and every ``extra`` field (``fields`` of an access line among them)."""

    def _seconds_text(self, created: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + ".%03dZ"

    def format_record(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", "-"),
            "service": getattr(record, "service", "-"),
            "method": getattr(record, "method", "-"),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc_info"] = record.exc_text
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data and not key.startswith("_"):
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)
