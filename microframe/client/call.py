"""``ClientCall``: what the client middleware chain knows about one outgoing call.

The call carries its own data only; what a step needs of its client (options, discovery, the
balancer, the outlier state) it is given when the chain is built (see
:meth:`~microframe.client.Client.chain`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from microframe.core.router import RpcKind

if TYPE_CHECKING:
    from microframe.discovery.instance import ServiceInstance


class ClientCall:
    """One call through a client's chain.

    ``service`` (the registered name called), ``method`` (``/package.Service/Method``),
    ``kind``, ``request``, ``response_class`` and ``timeout`` say what is called. Middleware
    read and set the rest: ``deadline`` (a ``time.monotonic()`` value), ``metadata`` (a list of
    pairs), ``instances`` (what discovery found), ``instance`` (what the balancer chose for this
    attempt), ``tried`` (the ids of the instances tried so far), ``attempt`` (1 for the first).
    """

    __slots__ = (
        "service",
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
        "color",
        "stress",
        "router",
    )

    def __init__(
        self,
        service: str,
        method: str,
        kind: RpcKind,
        request: Any,
        response_class: Any,
        timeout: float | None,
        metadata: list[tuple[str, str]],
    ) -> None:
        self.service = service
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
        #: The call's color, its load-test mark, and the client's router of colors
        #: (microframe.client.colors), once discovery has routed it.
        self.color: str | None = None
        self.stress = False
        self.router: Any = None

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative; infinite without one)."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.monotonic())


#: A step of the client chain, built once per client and method: it takes the call and returns
#: the response (for a server-streaming method, an async iterator of the responses).
ClientHandler = Callable[[ClientCall], Awaitable[Any]]
