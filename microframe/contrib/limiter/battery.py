"""The limiter battery: rate limiting and load shedding."""

from __future__ import annotations

from microframe.batteries import Battery


class LimiterBattery(Battery):
    """``microframe.contrib.limiter``."""

    name = "microframe.contrib.limiter"
    label = "limiter"

    def ready(self) -> None:
        """Register the limiter checks."""
        import microframe.contrib.limiter.checks  # noqa: F401 - registers them
