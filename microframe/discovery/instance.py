"""``ServiceInstance``: one serving process (or pool of workers) of a service, as registered.

Its JSON form is the value stored under ``<prefix>/<service name>/<instance id>`` (DESIGN §6):
``id``, ``name``, ``address`` ("host:port"), ``host``, ``port``, ``weight``, ``metadata`` and
``version``. Readers accept values written by other tools as long as ``id``, ``name`` and
``address`` are there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

DEFAULT_WEIGHT = 100


class InvalidInstance(ValueError):
    """A registry value that does not describe an instance."""


def format_address(host: str, port: int) -> str:
    """Return ``host:port``, with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise :class:`InvalidInstance` when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidInstance(f"{address!r} is not a HOST:PORT address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(frozen=True)
class ServiceInstance:
    """An instance of service ``name`` reachable at ``host:port``.

    ``weight`` (a positive int, default 100) steers weighted load balancers; ``metadata`` holds
    string pairs such as ``zone``, ``idc`` or ``env``; ``version`` is the service's own version.
    """

    id: str
    name: str
    host: str
    port: int
    weight: int = DEFAULT_WEIGHT
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self) -> None:
        if not self.id or "/" in self.id:
            raise InvalidInstance(f"instance id {self.id!r} must be non-empty and contain no '/'")
        if not self.name or "/" in self.name:
            raise InvalidInstance(
                f"service name {self.name!r} must be non-empty and contain no '/'"
            )
        if not isinstance(self.port, int) or not 0 < self.port <= 65535:
            raise InvalidInstance(f"port {self.port!r} of {self.id!r} is not in 1-65535")
        if not isinstance(self.weight, int) or self.weight < 0:
            raise InvalidInstance(f"weight {self.weight!r} of {self.id!r} must be an int >= 0")

    @cached_property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for an IPv6 host), what a gRPC channel dials (made once:
        the client reads it several times per call)."""
        return format_address(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "weight": self.weight,
            "metadata": dict(self.metadata),
            "version": self.version,
        }

    def to_json(self) -> str:
        """The JSON of :meth:`to_dict` (made once: the discovery cache's snapshot joins the
        JSON of every instance of a service)."""
        text = self.__dict__.get("_json")
        if text is None:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceInstance:
        try:
            host, port = split_address(str(data["address"]))
            metadata = data.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise InvalidInstance(f"metadata must be an object, not {metadata!r}")
            weight = data.get("weight", DEFAULT_WEIGHT)
            return cls(
                id=str(data["id"]),
                name=str(data["name"]),
                host=host,
                port=port,
                weight=int(weight) if weight is not None else DEFAULT_WEIGHT,
                metadata={str(k): str(v) for k, v in metadata.items()},
                version=str(data.get("version") or ""),
            )
        except KeyError as err:
            raise InvalidInstance(f"missing {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            if isinstance(err, InvalidInstance):
                raise
            raise InvalidInstance(str(err)) from None

    @classmethod
    def from_json(cls, raw: str | bytes) -> ServiceInstance:
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise InvalidInstance(f"not JSON: {err}") from None
        if not isinstance(data, dict):
            raise InvalidInstance("not a JSON object")
        return cls.from_dict(data)

