"""The auth battery: authentication of the calls served."""

from __future__ import annotations

from microframe.batteries import Battery


class AuthBattery(Battery):
    """``microframe.contrib.auth``."""

    name = "microframe.contrib.auth"
    label = "auth"

    def ready(self) -> None:
        """Register the auth checks."""
        import microframe.contrib.auth.checks  # noqa: F401 - registers them
