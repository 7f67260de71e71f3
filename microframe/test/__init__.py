"""Test helpers: ``override_settings`` and real-server fixtures' building blocks."""

from microframe.test.utils import override_settings

__all__ = ["override_settings"]
