"""The line formats: ``TEXT_FORMAT`` (a ``logging.Formatter`` format) and :class:`JsonFormatter`.

A JSON line is ``json.dumps`` of the record's standard fields, the request fields and any
``extra`` given to the call; this is the whole of it, so it is written here rather than taken
from python-json-logger (whose field-selection syntax we would not use).
"""

from __future__ import annotations

import json
import logging
from typing import Any

#: The text format: time, level, pid, logger, then the request (trace id, service, method).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(trace_id)s %(service)s %(method)s] %(message)s"

#: LogRecord attributes that are not ``extra`` fields.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "trace_id", "service", "method", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``,
    ``message``, ``trace_id``, ``service``, ``method``, ``exc_info`` (the traceback, when there
    is one) and every ``extra`` field (``fields`` of an access line among them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_msec_format = "%s.%03dZ"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        import time

        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
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
            if key not in _STANDARD and key not in data:
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)
