"""Metrics of the configuration center (prometheus_client default registry, made on first use).

- ``microframe_config_applied_total{setting}``: changes of a stored setting applied live;
- ``microframe_config_rejected_total{setting,check}``: changes refused: ``check`` is the id of
  the system check the new value fails (``config.invalid`` for a value that is not JSON,
  ``config.apply`` when a battery could not rebuild what it derives from it);
- ``microframe_config_restart_required{setting}``: 1 while a stored change of the setting waits
  for a restart (the process runs with the old value);
- ``microframe_config_revision``: the revision of the configuration center last applied;
- ``microframe_config_up``: 1 while the process follows the configuration center, 0 while it
  cannot reach it (it runs on the values it has).
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge

from microframe.utils.once import once


class ConfigMetrics(NamedTuple):
    applied: Counter
    rejected: Counter
    restart_required: Gauge
    revision: Gauge
    up: Gauge


@once
def config_metrics() -> ConfigMetrics:
    """Return the configuration center's metrics, creating them on the first call."""
    return ConfigMetrics(
        applied=Counter("microframe_config_applied", "Stored setting changes applied live.",
                        ("setting",), registry=REGISTRY),
        rejected=Counter("microframe_config_rejected",
                         "Stored setting changes refused (the check they fail).",
                         ("setting", "check"), registry=REGISTRY),
        restart_required=Gauge("microframe_config_restart_required",
                               "1 while a stored change of the setting waits for a restart.",
                               ("setting",), registry=REGISTRY, multiprocess_mode="max"),
        revision=Gauge("microframe_config_revision",
                       "Revision of the configuration center last applied.",
                       registry=REGISTRY, multiprocess_mode="min"),
        up=Gauge("microframe_config_up",
                 "1 while the configuration center is followed, 0 while it is unreachable.",
                 registry=REGISTRY, multiprocess_mode="min"),
    )
