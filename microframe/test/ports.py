"""A free loopback port, for a server a test (or a benchmark) starts in another process."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Ports handed out by this process: never twice, though their servers may not have bound yet.
_given: set[int] = set()
#: How many ports below the ephemeral range to choose from.
_SPAN = 12000


def _ephemeral_range() -> tuple[int, int] | None:
    """The range the kernel takes the local ports of outgoing connections from (Linux)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port of ``host`` that was free a moment ago, and that this process has not
    handed out before.

    The port is taken below the kernel's ephemeral range where there is room: a port the
    kernel picks for port 0 comes from that range, from which it also takes the local port of
    every outgoing connection, so that between this call and the server's bind any client
    connecting anywhere could take it (a server then fails with "address already in use").
    Elsewhere, it is the kernel's choice for port 0.

    In-process servers should bind port 0 themselves (``microframe.test.serve()`` does); this is
    for one started elsewhere, which must be told its port.
    """
    ephemeral = _ephemeral_range()
    if ephemeral is not None and ephemeral[0] - _SPAN >= 1024:
        low, high = ephemeral[0] - _SPAN, ephemeral[0] - 1
        for _ in range(200):
            port = random.randint(low, high)
            if port not in _given and _bindable(host, port):
                _given.add(port)
                return port
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
