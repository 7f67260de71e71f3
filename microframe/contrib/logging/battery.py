"""The logging battery: logging: the LOG settings, the access log, TRACE."""

from __future__ import annotations

from microframe.batteries import Battery


class LoggingBattery(Battery):
    """``microframe.contrib.logging``."""

    name = "microframe.contrib.logging"
    label = "logging"

    def ready(self) -> None:
        """Register the logging checks; follow ``LOG["LEVEL"]`` when it changes."""
        import microframe.contrib.logging.checks  # noqa: F401 - registers them
        from microframe.contrib.logging.config import follow_level
        from microframe.core.signals import setting_changed

        setting_changed.connect(follow_level, weak=False)
