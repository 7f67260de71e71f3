"""Test helpers: ``override_settings``, ``serve()`` for the service's own server, and
``free_port()`` for a server started in another process."""

from microframe.test.ports import free_port
from microframe.test.server import serve
from microframe.test.utils import override_settings

__all__ = ["free_port", "override_settings", "serve"]
