"""The default logging configuration, and how ``LOGGING`` is applied at start-up.

The default (:func:`default_logging`) is built from the ``LOG`` setting:

- a console handler (stderr) and, unless ``LOG["DIR"]`` is None, a file
  ``<DIR>/<SERVICE_NAME>.log`` (``<SERVICE_NAME>.<worker>.log`` for each worker of a
  ``--workers`` pool: processes never share a rotating file), rotated by size
  (``ROTATE_BYTES``) or by time (``ROTATE_WHEN``: ``"midnight"``, ``"H"``...), keeping
  ``BACKUPS`` old files;
- both behind the :class:`~microframe.contrib.logging.handlers.QueueHandler`, so that no request
  ever waits on a write;
- the ``FORMAT`` (``"text"`` or ``"json"``) for both, every line with the request's trace id,
  service and method;
- ``LEVEL`` for the ``microframe`` loggers (``"TRACE"`` is a level); the root logger takes
  WARNING and above from every other library, through the same handlers.

The service's ``LOGGING`` is then merged deeply over it, Django-style: a service that only says
``{"loggers": {"orders": {"level": "DEBUG"}}}`` keeps every default handler.
"""

from __future__ import annotations

import logging
import logging.config
import os
from pathlib import Path
from typing import Any

import microframe.contrib.logging.levels  # noqa: F401  (registers TRACE before any config)
from microframe.conf import global_settings
from microframe.utils.module_loading import import_string

#: The defaults of ``LOG`` (``global_settings.LOG``).
DEFAULT_LOG: dict[str, Any] = global_settings.LOG

FORMATS = ("text", "json")
#: ``LOGGING_SETUP``'s default: this module's :func:`configure_from_settings`.
DEFAULT_SETUP = global_settings.LOGGING_SETUP


def log_options(log: dict[str, Any] | None) -> dict[str, Any]:
    """``LOG`` over its defaults."""
    return {**DEFAULT_LOG, **(log or {})}


def log_file_path(log: dict[str, Any] | None, service_name: str, service_root: str) -> Path | None:
    """The default log file of this process, or None without a ``LOG["DIR"]``."""
    options = log_options(log)
    if not options["DIR"]:
        return None
    directory = Path(options["DIR"])
    if not directory.is_absolute():
        directory = Path(service_root) / directory
    worker = os.environ.get("MICROFRAME_WORKER_ID")
    name = f"{service_name}.{worker}.log" if worker else f"{service_name}.log"
    return directory / name


def default_logging(
    log: dict[str, Any] | None = None,
    service_name: str = global_settings.SERVICE_NAME,
    service_root: str = ".",
) -> dict[str, Any]:
    """The default ``dictConfig`` dictionary (see the module's documentation)."""
    options = log_options(log)
    fmt = options["FORMAT"]
    if fmt not in FORMATS:
        from microframe.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f'LOG["FORMAT"] must be "text" or "json", not {fmt!r}.')
    formatter = "microframe.json" if fmt == "json" else "microframe.text"
    handlers: dict[str, Any] = {
        "console": {
            "class": "microframe.contrib.logging.handlers.ConsoleHandler",
            "formatter": formatter,
        },
    }
    targets = ["console"]
    path = log_file_path(options, service_name, service_root)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            from microframe.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f'LOG["DIR"]: the log directory {path.parent} cannot be created ({err.strerror}); '
                'point it at a writable directory, or None for the console only.'
            ) from None
        if options["ROTATE_WHEN"]:
            handlers["file"] = {
                "class": "microframe.contrib.logging.handlers.TimedRotatingFileHandler",
                "filename": str(path),
                "when": options["ROTATE_WHEN"],
                "backupCount": options["BACKUPS"],
                "encoding": "utf-8",
                "delay": True,
                "formatter": formatter,
            }
        else:
            handlers["file"] = {
                "class": "microframe.contrib.logging.handlers.RotatingFileHandler",
                "filename": str(path),
                "maxBytes": options["ROTATE_BYTES"],
                "backupCount": options["BACKUPS"],
                "encoding": "utf-8",
                "delay": True,
                "formatter": formatter,
            }
        targets.append("file")
    handlers["queue"] = {
        "class": "microframe.contrib.logging.handlers.QueueHandler",
        "handlers": targets,
        "queue_size": options["QUEUE_SIZE"],
        "filters": ["request_fields"],
    }
    level = options["LEVEL"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_fields": {"()": "microframe.contrib.logging.filters.RequestFieldsFilter"},
        },
        "formatters": {
            "microframe.text": {"()": "microframe.contrib.logging.formatters.TextFormatter"},
            "microframe.json": {"()": "microframe.contrib.logging.formatters.JsonFormatter"},
        },
        "handlers": handlers,
        "loggers": {
            "microframe": {"handlers": ["queue"], "level": level, "propagate": False},
            # A line per outgoing call: set to INFO in LOGGING to see them.
            "microframe.client.access": {"level": "WARNING"},
        },
        # Other libraries' loggers (and the service's own, unless LOGGING sets their level):
        # warnings and errors, through the same handlers.
        "root": {"handlers": ["queue"], "level": "WARNING"},
    }


def merged_logging_config(
    logging_settings: dict[str, Any] | None, default: dict[str, Any]
) -> dict[str, Any]:
    """The service's ``LOGGING`` merged deeply over ``default``.

    A logger that should lose the default handlers says ``"handlers": []`` explicitly. An
    ``incremental`` configuration is passed through as is.
    """
    from microframe.conf import deep_merge

    if not logging_settings:
        return default
    if logging_settings.get("incremental"):
        return logging_settings
    merged: dict[str, Any] = deep_merge(default, logging_settings)
    return merged


def configure_logging(
    logging_config: str | None, logging_settings: dict[str, Any] | None, default: dict[str, Any]
) -> None:
    """Apply ``LOGGING`` (merged over ``default``) through the ``LOGGING_CONFIG`` callable.

    With ``LOGGING_CONFIG = None`` only ``default`` is applied and the service configures
    logging itself, as in Django. The queue handlers' writers are started at once.
    """
    if not logging_config:
        logging.config.dictConfig(default)
    else:
        configure = import_string(logging_config)
        if logging_settings and logging_settings.get("incremental"):
            logging.config.dictConfig(default)
        configure(merged_logging_config(logging_settings, default))
    from microframe.contrib.logging.handlers import QueueHandler

    for handler in list(logging._handlerList):  # type: ignore[attr-defined]
        target = handler()
        if isinstance(target, QueueHandler):
            target.start()


def configure_from_settings() -> None:
    """What ``microframe.setup()`` does: the default from ``LOG``, then ``LOGGING`` over it."""
    from microframe.conf import settings

    default = default_logging(
        getattr(settings, "LOG", None),
        settings.SERVICE_NAME,
        getattr(settings, "SERVICE_ROOT", os.getcwd()),
    )
    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING, default)


def follow_level(sender: Any, *, setting: str, value: Any = None, **kwargs: Any) -> None:
    """``setting_changed``: ``LOG`` changed (the configuration center); give the
    ``microframe`` loggers its ``LEVEL``. Only the level: the rest of ``LOG`` (format, files)
    is applied at start-up, when logging is configured. Nothing is done when the service
    configures logging itself (``LOGGING_SETUP`` is not the default)."""
    from microframe.conf import settings

    if setting != "LOG" or settings.LOGGING_SETUP != DEFAULT_SETUP:
        return
    level = log_options(value if isinstance(value, dict) else None)["LEVEL"]
    number = logging.getLevelName(str(level).upper())
    if isinstance(number, int):  # else logging.E001 says what is wrong; the level stays
        logging.getLogger("microframe").setLevel(number)
