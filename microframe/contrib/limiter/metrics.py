"""Metrics of the limiter battery (prometheus_client default registry, created on first use).

- ``microframe_limiter_allowed_total{grpc_service,grpc_method}``: calls the limiter let through;
- ``microframe_limiter_rejected_total{grpc_service,grpc_method}``: calls it answered
  RESOURCE_EXHAUSTED (over the limit, or they would have waited past ``MAX_WAIT`` or their
  deadline);
- ``microframe_limiter_wait_seconds{grpc_service,grpc_method}``: how long admitted calls waited
  for their turn (``wait`` mode; 0 for the calls admitted at once);
- ``microframe_limiter_shed_total{grpc_service,grpc_method}``: calls the load shedder refused;
- ``microframe_limiter_redis_fallbacks_total``: decisions taken by the local bucket because Redis
  could not be reached;
- ``microframe_limiter_redis_up``: 1 while Redis answers, 0 while the limiter falls back.
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from microframe.utils.once import once

LABELS = ("grpc_service", "grpc_method")
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LimiterMetrics(NamedTuple):
    allowed: Counter
    rejected: Counter
    wait_seconds: Histogram
    shed: Counter
    redis_fallbacks: Counter
    redis_up: Gauge


@once
def limiter_metrics() -> LimiterMetrics:
    """Return the limiter metrics, creating them on the first call."""
    return LimiterMetrics(
        allowed=Counter("microframe_limiter_allowed", "Calls the rate limiter let through.",
                        LABELS, registry=REGISTRY),
        rejected=Counter("microframe_limiter_rejected",
                         "Calls the rate limiter answered RESOURCE_EXHAUSTED.",
                         LABELS, registry=REGISTRY),
        wait_seconds=Histogram("microframe_limiter_wait_seconds",
                               "Seconds admitted calls waited for their turn.", LABELS,
                               buckets=WAIT_BUCKETS, registry=REGISTRY),
        shed=Counter("microframe_limiter_shed", "Calls the load shedder refused (overload).",
                     LABELS, registry=REGISTRY),
        redis_fallbacks=Counter(
            "microframe_limiter_redis_fallbacks",
            "Limiter decisions taken locally because Redis could not be reached.",
            registry=REGISTRY,
        ),
        redis_up=Gauge("microframe_limiter_redis_up",
                       "1 while the Redis of the limiter answers, 0 while it falls back.",
                       registry=REGISTRY, multiprocess_mode="min"),
    )
