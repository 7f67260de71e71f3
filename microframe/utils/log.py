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
        # A line per outgoing call: set to INFO in LOGGING to see them.
        "microframe.client.access": {"level": "WARNING"},
    },
}


def merged_logging_config(logging_settings: dict[str, Any] | None) -> dict[str, Any]:
    """The service's ``LOGGING`` merged deeply over :data:`DEFAULT_LOGGING`.

    A service that only says ``{"loggers": {"microframe": {"level": "DEBUG"}}}`` keeps the
    default console handler and formatter; a logger that should lose them says
    ``"handlers": []`` explicitly. An ``incremental`` configuration is passed through as is.
    """
    from microframe.conf import deep_merge

    if not logging_settings:
        return DEFAULT_LOGGING
    if logging_settings.get("incremental"):
        return logging_settings
    merged: dict[str, Any] = deep_merge(DEFAULT_LOGGING, logging_settings)
    return merged


def configure_logging(logging_config: str | None, logging_settings: dict[str, Any] | None) -> None:
    """Apply ``LOGGING`` (merged over the default) through the ``LOGGING_CONFIG`` callable.

    With ``LOGGING_CONFIG = None`` only the default configuration is applied and the service
    configures logging itself, as in Django.
    """
    if not logging_config:
        logging.config.dictConfig(DEFAULT_LOGGING)
        return
    configure = import_string(logging_config)
    if logging_settings and logging_settings.get("incremental"):
        logging.config.dictConfig(DEFAULT_LOGGING)
    configure(merged_logging_config(logging_settings))
