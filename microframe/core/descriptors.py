"""The proto services a service knows: what its generated code defines and its router serves.

``call`` and the HTTP gateway find the descriptors of the RPCs they are asked for here, in the
default descriptor pool, after importing every ``*_pb2`` module of the service's ``generate/``
and its router (which imports the descriptors of what it serves, wherever they were generated).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: The services every microframe server serves besides its router's (GRPC["HEALTH"],
#: GRPC["REFLECTION"]): called without an address, they are asked of this service.
STANDARD_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


class LocalService:
    """The current service (from the configured settings): its package, the proto services its
    router serves, every service its generated code defines, and the descriptor pool."""

    def __init__(self, *, load_router: bool = True) -> None:
        from google.protobuf import descriptor_pool
        from grpc_health.v1 import health_pb2  # noqa: F401 - registers grpc.health.v1.Health
        from grpc_reflection.v1alpha import reflection_pb2  # noqa: F401 - and ServerReflection

        from microframe.conf import settings

        self.pool: Any = descriptor_pool.Default()
        self.services: set[str] = {
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
        }
        self.served: set[str] = set()
        self.routes: list[Any] = []
        module = getattr(settings, "SETTINGS_MODULE", None) or ""
        self.package: str | None = module.rpartition(".")[0] or None
        root = Path(settings.SERVICE_ROOT)
        if self.package and (root / "generate").is_dir():
            for path in sorted((root / "generate").rglob("*_pb2.py")):
                parts = path.relative_to(root).with_suffix("").parts
                generated = importlib.import_module(".".join((self.package, *parts)))
                declared = generated.DESCRIPTOR.services_by_name.values()
                self.services.update(s.full_name for s in declared)
        if load_router and getattr(settings, "ROOT_ROUTER", None):
            from microframe.core.router import load_routes

            self.routes = load_routes(settings.ROOT_ROUTER)
            self.served = {route.service for route in self.routes}
            self.services |= self.served

    def registry_name(self, full_service: str) -> str:
        """This service's SERVICE_NAME when its router serves ``full_service`` or it is one of
        the :data:`STANDARD_SERVICES` (health, reflection), else the proto package (``orders``
        for ``orders.Orders``), else the service's name in lower case."""
        if self.is_own(full_service):
            from microframe.conf import settings

            return str(settings.SERVICE_NAME)
        proto_package, _, name = full_service.rpartition(".")
        return proto_package or name.lower()

    def is_own(self, full_service: str) -> bool:
        """Tell whether this service serves ``full_service``: its router does, or it is one of
        the :data:`STANDARD_SERVICES` every server has."""
        return full_service in self.served or full_service in STANDARD_SERVICES


def find_service(pool: Any, name: str, known: list[str]) -> Any:
    """The service descriptor ``name`` in ``pool`` (fully qualified, or a unique short name
    among ``known``); raise LookupError saying what is known when there is none."""
    try:
        return pool.FindServiceByName(name)
    except KeyError:
        pass
    matches = [full for full in known if full.rpartition(".")[2] == name]
    if len(matches) == 1:
        return pool.FindServiceByName(matches[0])
    if len(matches) > 1:
        raise LookupError(f"{name!r} is ambiguous: write one of {', '.join(sorted(matches))}.")
    listed = ", ".join(sorted(known)) or "none"
    raise LookupError(f"Unknown service {name!r}. Known services: {listed}.")
