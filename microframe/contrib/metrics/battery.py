"""The metrics battery: Prometheus metrics of the calls served and made."""

from __future__ import annotations

from microframe.batteries import Battery


class MetricsBattery(Battery):
    """``microframe.contrib.metrics``."""

    name = "microframe.contrib.metrics"
    label = "metrics"

    def ready(self) -> None:
        """Serve runserver's /metrics endpoint (its checks are the framework's own,
        ``Tags.metrics``)."""
        from microframe.contrib.metrics import serving

        serving.connect()
