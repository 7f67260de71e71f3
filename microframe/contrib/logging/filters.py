"""``RequestFieldsFilter``: the request a record was written for, on every record."""

from __future__ import annotations

import logging

from microframe.core.context import current_context


class RequestFieldsFilter(logging.Filter):
    """Give every record ``trace_id``, ``service`` and ``method`` (``-`` outside a request).

    Put it on the handler that runs in the writing thread (the queue handler of the default
    configuration): the request is found from the running task's context, which the writer
    thread does not have.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            ctx = current_context()
            if ctx is not None:
                record.trace_id = ctx.trace_id
                record.service = ctx.service
                record.method = ctx.method
            else:
                record.trace_id = record.service = record.method = "-"
        return True
