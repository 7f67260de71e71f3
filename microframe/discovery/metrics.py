"""Metrics of the registry battery (prometheus_client default registry, created on first use).

- ``microframe_registry_registrations_total{backend, service}``: successful registrations,
  first ones and re-registrations after a loss;
- ``microframe_registry_lease_losses_total{backend, service}``: registrations the registry lost
  (lease expired or revoked by someone else, registry restarted or emptied);
- ``microframe_registry_watch_restarts_total{backend, service}``: watches re-established after
  they broke;
- ``microframe_registry_errors_total{backend, operation}``: failed registry operations;
- ``microframe_discovery_instances{service}``: instances a client knows of;
- ``microframe_discovery_stale{service}``: 1 while the instances of a service come from the
  last known state (registry unreachable, or read from the disk snapshot), else 0;
- ``microframe_discovery_stale_seconds{service}``: for how long that has been so.
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge

from microframe.utils.once import once


class RegistryMetrics(NamedTuple):
    registrations: Counter
    lease_losses: Counter
    watch_restarts: Counter
    errors: Counter
    instances: Gauge
    stale: Gauge
    stale_seconds: Gauge


@once
def registry_metrics() -> RegistryMetrics:
    """Return the registry metrics, creating them on the first call."""
    return RegistryMetrics(
        registrations=Counter(
            "microframe_registry_registrations",
            "Instances registered (first registrations and re-registrations).",
            ("backend", "service"),
            registry=REGISTRY,
        ),
        lease_losses=Counter(
            "microframe_registry_lease_losses",
            "Registrations the registry lost and that were made again.",
            ("backend", "service"),
            registry=REGISTRY,
        ),
        watch_restarts=Counter(
            "microframe_registry_watch_restarts",
            "Watches re-established after they broke.",
            ("backend", "service"),
            registry=REGISTRY,
        ),
        errors=Counter(
            "microframe_registry_errors",
            "Failed registry operations.",
            ("backend", "operation"),
            registry=REGISTRY,
        ),
        instances=Gauge(
            "microframe_discovery_instances",
            "Instances of a service known to this process.",
            ("service",),
            registry=REGISTRY,
            multiprocess_mode="max",
        ),
        stale=Gauge(
            "microframe_discovery_stale",
            "1 while the instances of a service are the last known ones "
            "(registry unreachable), else 0.",
            ("service",),
            registry=REGISTRY,
            multiprocess_mode="max",
        ),
        stale_seconds=Gauge(
            "microframe_discovery_stale_seconds",
            "Seconds since the instances of a service stopped being confirmed by the "
            "registry (0 when fresh).",
            ("service",),
            registry=REGISTRY,
            multiprocess_mode="max",
        ),
    )
