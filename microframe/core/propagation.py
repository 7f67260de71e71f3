"""Metadata that travels: what a request passes on to the calls it makes.

- ``x-md-global-*`` keys received with a request are sent on every call it makes through
  microframe's client, at every hop: a caller's key reaches the end of the chain of services
  (a tenant, a canary color, a load-test mark);
- ``x-md-local-*`` keys reach the service called and stop there (the caller sets them on its
  call, or a controller in ``ctx.metadata_out``);
- what a controller adds to ``ctx.metadata_out`` goes on every call of that request (one hop;
  name it ``x-md-global-*`` to have it travel on).

A caller must not be able to inflate every downstream call: at most ``PROPAGATION["MAX_KEYS"]``
global keys and ``PROPAGATION["MAX_BYTES"]`` bytes (names and values) are passed on, in the
order received; the rest are dropped, counted in ``microframe_metadata_dropped_total`` and
logged once per request.

Two global keys steer traffic: ``x-md-global-color`` (:data:`COLOR_KEY`, a canary's color:
:mod:`microframe.client.colors`) and ``PROPAGATION["STRESS_KEY"]`` (``x-md-global-stress``,
load-test traffic). A controller reads them as ``ctx.color`` and ``ctx.stress`` (to write a load
test's orders to shadow tables, say), and the access logs mark the calls that carry them
(``color=canary``, ``stress=1``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from microframe.utils.once import once

GLOBAL_PREFIX = "x-md-global-"
LOCAL_PREFIX = "x-md-local-"
#: The metadata key a call's color travels in (matched to the ``color`` of instances).
COLOR_KEY = "x-md-global-color"
#: Values of the stress key that do not mark a call: the key sent empty or switched off.
NOT_STRESS = frozenset({"", "0", "false", "no", "off"})
_WORD = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

Pairs = tuple[tuple[str, Any], ...]

logger = logging.getLogger("microframe.propagation")


@once
def _dropped() -> Any:
    from prometheus_client import REGISTRY, Counter

    return Counter(
        "microframe_metadata_dropped",
        "x-md-global-* keys received but not passed on (PROPAGATION's caps).",
        registry=REGISTRY,
    )


def caps() -> tuple[int, int]:
    """``PROPAGATION["MAX_KEYS"]`` and ``["MAX_BYTES"]``."""
    from microframe.conf import dict_setting

    config = dict_setting("PROPAGATION")
    return int(config["MAX_KEYS"]), int(config["MAX_BYTES"])


def stress_key() -> str:
    """``PROPAGATION["STRESS_KEY"]``: the key that marks load-test traffic."""
    from microframe.conf import dict_setting

    return str(dict_setting("PROPAGATION")["STRESS_KEY"])


def stress_color() -> str | None:
    """``PROPAGATION["STRESS_COLOR"]``: the color of load-test calls that have none."""
    from microframe.conf import dict_setting

    return dict_setting("PROPAGATION")["STRESS_COLOR"] or None


def is_stress(value: Any) -> bool:
    """Whether a stress key's ``value`` marks a call (anything but empty, 0, false, no, off)."""
    return value is not None and str(value).strip().lower() not in NOT_STRESS


def steering(metadata: Any, key: str | None = None) -> tuple[str | None, bool]:
    """The color (the last ``x-md-global-color``) and the stress mark (``key``, if given) of a
    call's ``metadata`` pairs, in one pass."""
    color = stress = None
    for name, value in metadata:
        if name == COLOR_KEY:
            color = value
        elif name == key:
            stress = value
    return color or None, is_stress(stress)


def log_token(value: Any) -> str:
    """``value`` as written in a text log line: as it is when it is one plain word, else quoted
    with JSON's escapes, so that a caller's value cannot forge other fields of the line."""
    text = str(value)
    if _WORD.fullmatch(text):
        return text
    import json

    return json.dumps(text[:256])


def global_metadata(metadata: dict[str, Any], where: str = "") -> Pairs:
    """The ``x-md-global-*`` pairs of ``metadata`` to pass on, within the caps (see the module
    docstring); ``where`` names the request in the log line of what was dropped."""
    found = [(k, v) for k, v in metadata.items() if k.startswith(GLOBAL_PREFIX)]
    if not found:
        return ()
    max_keys, max_bytes = caps()
    kept: list[tuple[str, Any]] = []
    size = dropped = 0
    for key, value in found:
        cost = len(key) + len(value)
        if len(kept) < max_keys and size + cost <= max_bytes:
            kept.append((key, value))
            size += cost
        else:
            dropped += 1
    if dropped:
        _dropped().inc(dropped)
        logger.warning(
            "%s: %d x-md-global-* key(s) not passed on (PROPAGATION: at most %d keys, %d bytes)",
            where or "a request", dropped, max_keys, max_bytes,
        )
    return tuple(kept)
