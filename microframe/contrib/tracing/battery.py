"""The tracing battery: tracing of the calls served and made."""

from __future__ import annotations

from microframe.batteries import Battery


class TracingBattery(Battery):
    """``microframe.contrib.tracing``."""

    name = "microframe.contrib.tracing"
    label = "tracing"

    def ready(self) -> None:
        """Register the tracing checks."""
        import microframe.contrib.tracing.checks  # noqa: F401 - registers them
