"""The validation battery: request validation from the rules in the protos."""

from __future__ import annotations

from microframe.batteries import Battery


class ValidationBattery(Battery):
    """``microframe.contrib.validation``."""

    name = "microframe.contrib.validation"
    label = "validation"

    def ready(self) -> None:
        """Register the validation checks."""
        import microframe.contrib.validation.checks  # noqa: F401 - registers them
