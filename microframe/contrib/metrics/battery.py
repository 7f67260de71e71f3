"""The metrics battery: Prometheus metrics of the calls served and made."""

from __future__ import annotations

from microframe.batteries import Battery


class MetricsBattery(Battery):
    """``microframe.contrib.metrics``."""

    name = "microframe.contrib.metrics"
    label = "metrics"

    # Its checks are the framework's own (Tags.metrics): nothing to plug in.
