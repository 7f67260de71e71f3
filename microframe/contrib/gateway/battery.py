"""The gateway battery: the HTTP/JSON gateway."""

from __future__ import annotations

from microframe.batteries import Battery


class GatewayBattery(Battery):
    """``microframe.contrib.gateway``."""

    name = "microframe.contrib.gateway"
    label = "gateway"

    def ready(self) -> None:
        """Register the gateway checks."""
        import microframe.contrib.gateway.checks  # noqa: F401 - registers them
