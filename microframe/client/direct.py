"""``DirectDiscovery``: call fixed addresses instead of looking the service up in the registry.

``Client("orders", address="127.0.0.1:50051")`` (or a list of addresses) uses it: the call still
goes through the whole client chain (deadline, metrics, breaker, balancer, retry), only the
instances come from the caller instead of the registry. Tests and ``manage.py call --address``
use it, as do deployments that put a fixed address (a Kubernetes Service, a load balancer) in
front of a service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class DirectDiscovery:
    """The instances at ``addresses`` (``host:port``), whatever the service asked for."""

    def __init__(self, addresses: str | Sequence[str]) -> None:
        from microframe.discovery.instance import ServiceInstance, split_address

        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ValueError("DirectDiscovery needs at least one HOST:PORT address")
        self._addresses = list(addresses)
        self._by_service: dict[str, list[Any]] = {}
        self._split = split_address
        self._instance = ServiceInstance
        for address in self._addresses:
            split_address(address)  # a bad address fails here, not at the first call

    async def instances(self, service: str) -> list[Any]:
        found = self._by_service.get(service)
        if found is None:
            found = self._by_service[service] = [
                self._instance(id=address, name=service, host=host, port=port)
                for address in self._addresses
                for host, port in [self._split(address)]
            ]
        return found

    def subscribe(self, service: str, listener: Callable[[str, list[Any]], None]) -> None:
        """Nothing to follow: the addresses never change."""
