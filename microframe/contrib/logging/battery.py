"""The logging battery: logging: the LOG settings, the access log, TRACE."""

from __future__ import annotations

from microframe.batteries import Battery


class LoggingBattery(Battery):
    """``microframe.contrib.logging``."""

    name = "microframe.contrib.logging"
    label = "logging"

    def ready(self) -> None:
        """Register the logging checks."""
        import microframe.contrib.logging.checks  # noqa: F401 - registers them
