"""The coordination battery: locks, leader election and the TASKS runner, on etcd."""

from __future__ import annotations

from microframe.batteries import Battery


class CoordinationBattery(Battery):
    """``microframe.contrib.coordination``."""

    name = "microframe.contrib.coordination"
    label = "coordination"

    def ready(self) -> None:
        """Register the coordination checks; run the TASKS while runserver serves."""
        import microframe.contrib.coordination.checks  # noqa: F401 - registers them
        from microframe.contrib.coordination import serving

        serving.connect()
