"""System checks of the logging battery (tag ``logging``).

- ``logging.E001``: ``LOG`` is not valid (not a dict, unknown keys, an unknown level or format,
  a queue size or rotation that is not a positive number).
- ``logging.E002``: ``ACCESS_LOG`` is not valid.
- ``logging.W001``: the log directory cannot be written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from microframe.conf import dict_setting, global_settings, settings
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register

LOG_KEYS = set(global_settings.LOG)
ACCESS_KEYS = set(global_settings.ACCESS_LOG)
ROTATE_WHEN = ("S", "M", "H", "D", "MIDNIGHT", *(f"W{d}" for d in range(7)))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@register(Tags.logging, Tags.settings)
def check_logging_settings(**kwargs: Any) -> list[CheckMessage]:
    import microframe.contrib.logging.levels  # noqa: F401  (TRACE is a level name)

    log = dict_setting("LOG")
    hint = 'e.g. LOG = {"LEVEL": "INFO", "FORMAT": "json", "DIR": "logs"}'
    if not isinstance(log, dict):
        return [Error(f"LOG must be a dict, not {type(log).__name__}.", hint=hint,
                      id="logging.E001")]
    errors: list[CheckMessage] = []
    errors.extend(unknown_keys("LOG", log, LOG_KEYS, "logging.E001"))
    level = log["LEVEL"]
    if not isinstance(logging.getLevelName(level) if isinstance(level, str) else level, int):
        errors.append(Error(f'LOG["LEVEL"] {level!r} is not a logging level.',
                            hint="DEBUG, TRACE, INFO, WARNING, ERROR or CRITICAL.",
                            id="logging.E001"))
    if log["FORMAT"] not in ("text", "json"):
        errors.append(Error(f'LOG["FORMAT"] must be "text" or "json", not {log["FORMAT"]!r}.',
                            id="logging.E001"))
    for key in ("QUEUE_SIZE", "ROTATE_BYTES"):
        if not _positive_int(log[key]):
            errors.append(Error(f'LOG["{key}"] must be a positive int, not {log[key]!r}.',
                                id="logging.E001"))
    backups = log["BACKUPS"]
    if not (isinstance(backups, int) and backups >= 0):
        errors.append(Error(f'LOG["BACKUPS"] must be an int >= 0, not {backups!r}.',
                            id="logging.E001"))
    when = log["ROTATE_WHEN"]
    if when is not None and (not isinstance(when, str) or when.upper() not in ROTATE_WHEN):
        errors.append(Error(f'LOG["ROTATE_WHEN"] {when!r} is not a rotation interval.',
                            hint='None (rotate by size), "midnight", "H", "D", "W0"-"W6"...',
                            id="logging.E001"))
    directory = log["DIR"]
    if isinstance(directory, str) and directory:
        path = Path(directory)
        if not path.is_absolute():
            path = Path(getattr(settings, "SERVICE_ROOT", os.getcwd())) / path
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            errors.append(Warning(
                f"The log directory {path} cannot be written: the service would fail to start.",
                hint='Point LOG["DIR"] at a writable directory, or None for the console only.',
                id="logging.W001",
            ))
    access = dict_setting("ACCESS_LOG")
    if not isinstance(access, dict):
        errors.append(Error(f"ACCESS_LOG must be a dict, not {type(access).__name__}.",
                            id="logging.E002"))
        return errors
    errors.extend(unknown_keys("ACCESS_LOG", access, ACCESS_KEYS, "logging.E002"))
    metadata = access["METADATA"]
    if not isinstance(metadata, bool | list | tuple):
        errors.append(Error(
            f'ACCESS_LOG["METADATA"] must be True, False or a list of keys, not {metadata!r}.',
            id="logging.E002",
        ))
    if not isinstance(access["REDACTED"], list | tuple):
        errors.append(Error('ACCESS_LOG["REDACTED"] must be a list of metadata keys.',
                            id="logging.E002"))
    return errors
