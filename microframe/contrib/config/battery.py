"""The configuration center's battery."""

from __future__ import annotations

from microframe.batteries import Battery


class ConfigBattery(Battery):
    """``microframe.contrib.config``."""

    name = "microframe.contrib.config"
    label = "config"

    def ready(self) -> None:
        """Register the config checks; follow the configuration center while serving."""
        import microframe.contrib.config.checks  # noqa: F401 - registers them
        from microframe.contrib.config import serving

        serving.connect()
