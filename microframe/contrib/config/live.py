"""What of a setting a running service can apply: the live parts of each reloadable setting.

``CONFIG["RELOAD"]`` lists the settings a running service applies when their stored value
changes. A battery can rebuild some settings whole (the server's middleware chains are built
again for ``LIMITER``, ``ACCESS_LOG``, ``AUTH`` and ``VALIDATION``), others only in part
(``LOG``: its level; ``CLIENTS``: the options a client reads per call). A change touching
any other part waits for a restart, whole: a setting is never half applied.

A setting microframe does not define (the service's own) is applied whole: the service reads
it from ``settings`` and connects to ``setting_changed`` for what it derives from it.
"""

from __future__ import annotations

from typing import Any

#: The framework settings a running service applies, and the keys that may change (None:
#: every key; for ``CLIENTS`` the keys of each client's entry).
LIVE_KEYS: dict[str, frozenset[str] | None] = {
    "LIMITER": None,
    "ACCESS_LOG": None,
    "AUTH": None,
    "VALIDATION": None,
    "SILENCED_SYSTEM_CHECKS": None,
    "LOG": frozenset({"LEVEL"}),
    "CLIENTS": frozenset({
        "TIMEOUT", "METHOD_TIMEOUTS", "RETRY", "BREAKER", "LIMIT_QPS", "LIMIT_BURST",
        "LIMIT_WAIT", "METADATA",
    }),
}


def framework_setting(name: str) -> bool:
    """Whether microframe defines ``name`` (in its global settings)."""
    from microframe.conf import global_settings

    return hasattr(global_settings, name)


def reloadable(name: str) -> bool:
    """Whether a running service can apply ``name`` at all (in ``CONFIG["RELOAD"]`` or not)."""
    return name in LIVE_KEYS or not framework_setting(name)


def _changed_keys(old: Any, new: Any) -> set[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return {"*"} if old != new else set()
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def restart_keys(name: str, old: Any, new: Any) -> list[str]:
    """The parts of ``name`` whose change from ``old`` to ``new`` needs a restart ([]: the
    change can be applied live). ``"*"`` stands for the whole setting."""
    if not reloadable(name):
        return ["*"] if old != new else []
    live = LIVE_KEYS.get(name)
    if live is None:
        return []
    if name == "CLIENTS":
        if not isinstance(old, dict) or not isinstance(new, dict):
            return ["*"] if old != new else []
        found = set()
        for client in old.keys() & new.keys():
            found |= {f"{client}.{key}" for key in _changed_keys(old[client], new[client])
                      if key not in live}
        return sorted(found)  # a client added or removed: clients made from now on see it
    return sorted(key for key in _changed_keys(old, new) if key not in live)
