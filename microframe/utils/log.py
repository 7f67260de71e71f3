"""Logging configuration from the ``LOGGING`` setting, applied once at start-up."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from microframe.utils.module_loading import import_string


class RequestFieldsFilter(logging.Filter):
    """Give every record ``trace_id``, ``service`` and ``method`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            from microframe.core.context import current_context

            ctx = current_context()
            if ctx is not None:
                record.trace_id = ctx.trace_id
                record.service = ctx.service
                record.method = ctx.method
            else:
                record.trace_id = record.service = record.method = "-"
        return True


DEFAULT_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_fields": {"()": "microframe.utils.log.RequestFieldsFilter"}},
    "formatters": {
        "microframe.text": {
            "format": "%(asctime)s %(levelname)s %(process)d %(name)s %(trace_id)s %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_fields"],
            "formatter": "microframe.text",
        },
    },
    "loggers": {
        "microframe": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}


def configure_logging(logging_config: str | None, logging_settings: dict[str, Any] | None) -> None:
    """Apply the default configuration, then the service's ``LOGGING`` through ``LOGGING_CONFIG``."""
    logging.config.dictConfig(DEFAULT_LOGGING)
    if logging_config and logging_settings:
        configure = import_string(logging_config)
        configure(logging_settings)
