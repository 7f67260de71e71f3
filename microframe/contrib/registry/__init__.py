"""Service registration and discovery.

A service registers itself (``runserver`` does it once the server is serving) and finds the
instances of the services it calls through a :class:`Registry` backend chosen by
``REGISTRY["BACKEND"]`` and built with ``REGISTRY["OPTIONS"]``:

- :class:`microframe.contrib.registry.file.FileRegistry` (the default): services on one machine
  find each other through a shared directory; nothing to install;
- :class:`microframe.contrib.registry.etcd.EtcdRegistry`: etcd v3 (the ``etcd`` extra);
- :class:`microframe.contrib.registry.static.StaticRegistry`: fixed addresses from settings.

Clients read instances through :class:`microframe.discovery.cache.DiscoveryCache`, which
keeps the last known instances in memory and on disk, so that a registry outage does not stop
calls between services that already know each other.
"""

from __future__ import annotations

from microframe.discovery import (
    InvalidInstance,
    Registry,
    RegistryError,
    RegistryUnavailable,
    ServiceInstance,
    build_registry,
    describe_registry,
    get_registry,
)

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
