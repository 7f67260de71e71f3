"""The registry battery: service registration and discovery."""

from __future__ import annotations

from microframe.batteries import Battery


class RegistryBattery(Battery):
    """``microframe.contrib.registry``."""

    name = "microframe.contrib.registry"
    label = "registry"

    def ready(self) -> None:
        """Register the registry checks; register runserver's instance while it serves."""
        import microframe.contrib.registry.checks  # noqa: F401 - registers them
        from microframe.contrib.registry import serving

        serving.connect()
