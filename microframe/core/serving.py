"""What a process started by ``runserver`` serves: :class:`ServingProcess`.

runserver builds one per process and sends it with the signals of
:mod:`microframe.core.signals`, so that batteries can tell runserver's server from a server a
test starts, a lone server from a worker of a pool, and add what they serve to the line
runserver prints.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Literal

from microframe.discovery.instance import format_address

__all__ = ["AddressInUse", "Role", "ServingProcess"]

#: ``"server"``: one process serving alone; ``"supervisor"``: the parent of ``--workers N``
#: (it serves no call); ``"worker"``: one of its workers.
Role = Literal["server", "supervisor", "worker"]


@dataclass
class ServingProcess:
    """The process: its role, the gRPC address it serves, and what runserver was asked for.

    ``metrics_port`` is ``--metrics-port`` or ``METRICS["PORT"]``. ``endpoints`` collects what
    the batteries serve besides gRPC (``"metrics on http://..."``).
    """

    role: Role
    host: str
    port: int
    metrics_port: int = 0
    endpoints: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


class AddressInUse(OSError):
    """A battery could not bind ``host:port`` (what for: ``purpose``, e.g. ``"metrics"``);
    runserver turns it into an error naming the setting and the option that chose the port."""

    def __init__(self, host: str, port: int, purpose: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{format_address(host, port)} is already in use")
        self.host = host
        self.port = port
        self.purpose = purpose
