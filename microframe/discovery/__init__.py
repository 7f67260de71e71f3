"""Discovery: what a service instance is, the protocol of the registries that know them, and the
cache through which clients read them.

- :class:`~microframe.discovery.instance.ServiceInstance`: one instance of a service (the JSON a
  registry stores);
- :class:`~microframe.discovery.registry.Registry`: the protocol every backend implements, and
  its errors (:class:`RegistryError`, :class:`RegistryUnavailable`);
- :func:`build_registry` / :func:`get_registry`: the backend ``REGISTRY`` names (the backends
  themselves, registration and their checks are the registry battery,
  :mod:`microframe.contrib.registry`);
- :class:`~microframe.discovery.cache.DiscoveryCache`: the last known instances of each
  service, in memory and on disk, so a registry outage does not stop calls between services
  that already know each other.
"""

from __future__ import annotations

from microframe.discovery.backend import build_registry, describe_registry, get_registry
from microframe.discovery.instance import InvalidInstance, ServiceInstance
from microframe.discovery.registry import Registry, RegistryError, RegistryUnavailable

__all__ = [
    "InvalidInstance",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "ServiceInstance",
    "build_registry",
    "describe_registry",
    "get_registry",
]
