"""``StaticRegistry``: fixed addresses from settings, for tests and simple deployments.

::

    REGISTRY = {
        "BACKEND": "microframe.contrib.registry.static.StaticRegistry",
        "OPTIONS": {
            "services": {
                "orders": ["10.0.0.5:50051", "10.0.0.6:50051"],
                "users": [{"address": "10.0.0.7:50051", "weight": 200, "metadata": {"zone": "b"}}],
            },
        },
    }

Nothing is contacted: ``register`` and ``deregister`` change what this process's own registry
object returns (so that one process can register and find instances in tests), and ``watch``
yields the set, then every change made that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import InvalidInstance, ServiceInstance, split_address


def _instance(service: str, entry: str | Mapping[str, Any]) -> ServiceInstance:
    if isinstance(entry, str):
        host, port = split_address(entry)
        return ServiceInstance(id=entry, name=service, host=host, port=port)
    data = dict(entry)
    data.setdefault("name", service)
    data.setdefault("id", data.get("address"))
    return ServiceInstance.from_dict(data)


class StaticRegistry:
    """Instances listed in ``services``: ``{name: ["host:port" | {"address": ..., ...}]}``."""

    backend_name = "static"

    def __init__(
        self, services: Mapping[str, Sequence[str | Mapping[str, Any]]] | None = None
    ) -> None:
        self._instances: dict[str, dict[str, ServiceInstance]] = {}
        for name, entries in (services or {}).items():
            if isinstance(entries, str):
                entries = [entries]
            try:
                found = [_instance(name, entry) for entry in entries]
            except InvalidInstance as err:
                raise ImproperlyConfigured(
                    f'REGISTRY["OPTIONS"]["services"][{name!r}] is invalid: {err}'
                ) from None
            self._instances[name] = {i.id: i for i in found}
        self._changed: dict[str, asyncio.Condition] = {}
        self._versions: dict[str, int] = {}

    def _condition(self, service: str) -> asyncio.Condition:
        condition = self._changed.get(service)
        if condition is None:
            condition = self._changed[service] = asyncio.Condition()
        return condition

    async def _notify(self, service: str) -> None:
        self._versions[service] = self._versions.get(service, 0) + 1
        condition = self._condition(service)
        async with condition:
            condition.notify_all()

    async def register(self, instance: ServiceInstance) -> None:
        self._instances.setdefault(instance.name, {})[instance.id] = instance
        await self._notify(instance.name)

    async def deregister(self, instance: ServiceInstance) -> None:
        if self._instances.get(instance.name, {}).pop(instance.id, None) is not None:
            await self._notify(instance.name)

    async def instances(self, service: str) -> list[ServiceInstance]:
        return sorted(self._instances.get(service, {}).values(), key=lambda i: i.id)

    async def watch(self, service: str) -> AsyncIterator[list[ServiceInstance]]:
        condition = self._condition(service)
        seen = self._versions.get(service, 0)
        current = await self.instances(service)
        yield current
        while True:
            async with condition:
                while self._versions.get(service, 0) == seen:
                    await condition.wait()
                seen = self._versions.get(service, 0)
            now = await self.instances(service)
            if now != current:
                current = now
                yield current

    async def services(self) -> list[str]:
        return sorted(name for name, found in self._instances.items() if found)

    async def close(self) -> None:
        self._changed.clear()
