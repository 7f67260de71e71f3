"""A free loopback port, for a server a test (or a benchmark) starts in another process."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port of ``host`` that was free a moment ago (the kernel's choice for port 0).

    In-process servers should bind port 0 themselves (``microframe.test.serve()`` does); this is
    for one started elsewhere, which must be told its port.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
