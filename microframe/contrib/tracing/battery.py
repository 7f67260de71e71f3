"""The tracing battery: tracing of the calls served and made."""

from __future__ import annotations

from microframe.batteries import Battery


class TracingBattery(Battery):
    """``microframe.contrib.tracing``."""

    name = "microframe.contrib.tracing"
    label = "tracing"

    def ready(self) -> None:
        """Register the tracing checks; flush and close the tracer when a server stops."""
        import microframe.contrib.tracing.checks  # noqa: F401 - registers them
        from microframe.contrib.tracing import connect

        connect()
