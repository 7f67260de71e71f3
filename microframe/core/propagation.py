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
"""

from __future__ import annotations

import logging
from typing import Any

from microframe.utils.once import once

GLOBAL_PREFIX = "x-md-global-"
LOCAL_PREFIX = "x-md-local-"

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
