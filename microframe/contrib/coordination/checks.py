"""System checks of the coordination battery (tag ``coordination``).

- ``coordination.E001``: ``COORDINATION`` is malformed (not a dict, unknown keys, ``TTL`` not a
  whole number >= 1, ``PREFIX`` not a str starting with "/", ``OPTIONS`` neither a dict nor
  None).
- ``coordination.E002``: an entry of ``TASKS`` is malformed (not a dict, unknown keys,
  ``CALLABLE`` not importable, not callable or taking arguments, ``EVERY`` not a number of
  seconds > 0, ``LEADER_ONLY`` not a bool), or ``TASKS`` is not a dict.
- ``coordination.E003``: a task is LEADER_ONLY but no etcd is configured to elect the leader
  with (``COORDINATION["OPTIONS"]``, the etcd config center or the etcd registry).
"""

from __future__ import annotations

import inspect
from typing import Any

from microframe.conf import global_settings, settings
from microframe.contrib.coordination.tasks import TASK_KEYS
from microframe.core.checks.messages import CheckMessage, Error, unknown_keys
from microframe.core.checks.registry import Tags, register

KNOWN_KEYS = frozenset(global_settings.COORDINATION)
TASK_HINT = ('e.g. TASKS = {"cleanup": {"CALLABLE": "orders.tasks.cleanup", "EVERY": 60, '
             '"LEADER_ONLY": True}}')


@register("coordination", Tags.settings)
def check_coordination_settings(**kwargs: Any) -> list[CheckMessage]:
    config = getattr(settings, "COORDINATION", None)
    if not isinstance(config, dict):
        return [Error(
            f"COORDINATION must be a dict, not {type(config).__name__}.",
            hint='COORDINATION = {"OPTIONS": None, "PREFIX": "/microframe/coordination", '
            '"TTL": 10}',
            id="coordination.E001",
        )]
    errors = unknown_keys("COORDINATION", config, KNOWN_KEYS, "coordination.E001")
    ttl = config.get("TTL", global_settings.COORDINATION["TTL"])
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        errors.append(Error(
            f'COORDINATION["TTL"] must be a whole number of seconds >= 1, not {ttl!r}.',
            hint="The seconds a lock or a leadership outlives a process that died.",
            id="coordination.E001",
        ))
    prefix = config.get("PREFIX", global_settings.COORDINATION["PREFIX"])
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        errors.append(Error(
            f'COORDINATION["PREFIX"] must be a key prefix starting with "/", not {prefix!r}.',
            id="coordination.E001",
        ))
    options = config.get("OPTIONS")
    if options is not None and not isinstance(options, dict):
        errors.append(Error(
            'COORDINATION["OPTIONS"] must be a dict of EtcdConnection options or None, '
            f"not {type(options).__name__}.",
            hint='e.g. {"endpoints": ["10.0.0.1:2379"]}; None: the etcd of CONFIG or REGISTRY.',
            id="coordination.E001",
        ))
    return errors


def _task_errors(name: object, entry: object) -> list[str]:
    from microframe.utils.module_loading import import_string

    if not isinstance(entry, dict):
        return [f"must be a dict, not {type(entry).__name__}"]
    problems = []
    unknown = sorted(str(k) for k in set(entry) - TASK_KEYS)
    if unknown:
        problems.append(f"has unknown keys {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(TASK_KEYS))})")
    path = entry.get("CALLABLE")
    if not isinstance(path, str) or "." not in path:
        problems.append(f"CALLABLE must be the dotted path of a function, not {path!r}")
    else:
        try:
            func = import_string(path)
        except ImportError as err:
            problems.append(f"CALLABLE {path!r} cannot be imported: {err}")
        else:
            if not callable(func):
                problems.append(f"CALLABLE {path!r} is not callable")
            else:
                try:
                    inspect.signature(func).bind()
                except TypeError:
                    problems.append(f"CALLABLE {path!r} must take no arguments")
                except ValueError:
                    pass  # no signature to read (a builtin): let it run
    every = entry.get("EVERY")
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        problems.append(f"EVERY must be a number of seconds > 0, not {every!r}")
    leader_only = entry.get("LEADER_ONLY", False)
    if not isinstance(leader_only, bool):
        problems.append(f"LEADER_ONLY must be True or False, not {leader_only!r}")
    return problems


@register("coordination", Tags.settings)
def check_tasks(**kwargs: Any) -> list[CheckMessage]:
    tasks = getattr(settings, "TASKS", None)
    if not isinstance(tasks, dict):
        return [Error(f"TASKS must be a dict, not {type(tasks).__name__}.", hint=TASK_HINT,
                      id="coordination.E002")]
    errors: list[CheckMessage] = []
    for name, entry in tasks.items():
        for problem in _task_errors(name, entry):
            errors.append(Error(f"TASKS[{name!r}] {problem}.", hint=TASK_HINT,
                                id="coordination.E002"))
    leader_only = sorted(
        str(name) for name, entry in tasks.items()
        if isinstance(entry, dict) and entry.get("LEADER_ONLY") is True
    )
    if leader_only:
        from microframe.contrib.coordination.connection import resolve

        if resolve().options is None:
            errors.append(Error(
                f"TASKS {', '.join(leader_only)} are LEADER_ONLY, but no etcd is configured to "
                "elect the leader with.",
                hint='Set COORDINATION["OPTIONS"] (e.g. {"endpoints": ["127.0.0.1:2379"]}), or '
                "use the etcd registry or the etcd config center.",
                id="coordination.E003",
            ))
    return errors
