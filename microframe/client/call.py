"""``ClientCall``: what the client middleware chain knows about one outgoing call."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from microframe.core.router import RpcKind

if TYPE_CHECKING:
    from microframe.client.client import Client
    from microframe.discovery.instance import ServiceInstance


class ClientCall:
    """One call through a client's chain.

    Middleware read and set its attributes: ``deadline`` (a ``time.monotonic()`` value),
    ``metadata`` (a list of pairs), ``instances`` (what discovery found), ``instance`` (what the
    balancer chose for this attempt), ``tried`` (the ids of the instances tried so far),
    ``attempt`` (1 for the first).
    """

    __slots__ = (
        "client",
        "method",
        "kind",
        "request",
        "response_class",
        "timeout",
        "deadline",
        "metadata",
        "instances",
        "instance",
        "tried",
        "attempt",
    )

    def __init__(
        self,
        client: Client,
        method: str,
        kind: RpcKind,
        request: Any,
        response_class: Any,
        timeout: float | None,
        metadata: list[tuple[str, str]],
    ) -> None:
        self.client = client
        self.method = method
        self.kind = kind
        self.request = request
        self.response_class = response_class
        self.timeout = timeout
        self.deadline: float | None = None
        self.metadata = metadata
        self.instances: list[ServiceInstance] = []
        self.instance: ServiceInstance | None = None
        self.tried: list[str] = []
        self.attempt = 1

    @property
    def service(self) -> str:
        """The name of the service called (as registered)."""
        return self.client.service

    def repick(self) -> None:
        """Choose the instance of the next attempt with the client's balancer: never one that
        failed this call, nor one the client keeps away from, while another is available."""
        client = self.client
        avoid = set(self.tried)
        if client.ejections:
            avoid.update(client.ejections.current())
        self.instance = client.balancer.pick(self.instances, frozenset(avoid))

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative; infinite without one)."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.monotonic())
