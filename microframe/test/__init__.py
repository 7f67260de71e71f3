"""Test helpers: ``override_settings``, and ``serve()`` for the service's own server."""

from microframe.test.server import serve
from microframe.test.utils import override_settings

__all__ = ["override_settings", "serve"]
