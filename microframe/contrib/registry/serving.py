"""When runserver's instance is registered: the registry battery's signal receivers.

- One process serving alone (``process.role == "server"``): registered once the server serves
  and its health says SERVING (``server_started``), deregistered first thing when it stops
  (``server_stopping``, before the drain), so that clients stop choosing it while its last
  calls finish.
- ``--workers N``: the supervisor's process registers the pool's address once, when the port
  answers the health service (``pool_started``), and deregisters it before the workers are
  told to drain (``pool_stopping``). The workers register nothing.

Nothing is registered when ``REGISTRY["REGISTER"]`` is false, nor for a server that a program
or a test starts itself (``server.process`` is None).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from microframe.conf import dict_setting
from microframe.contrib.registry.registration import (
    WILDCARDS,
    Registration,
    instance_from_settings,
    wait_until_serving,
)
from microframe.core.signals import pool_started, pool_stopping, server_started, server_stopping
from microframe.discovery.instance import format_address

__all__ = ["connect"]

logger = logging.getLogger("microframe.registry")

#: The registration of each server or pool registered, until it stops.
_registrations: weakref.WeakKeyDictionary[Any, Registration] = weakref.WeakKeyDictionary()

#: Seconds between the messages saying that the workers do not serve yet.
POOL_WAIT_STEP = 30.0


def _registers() -> bool:
    return bool(dict_setting("REGISTRY")["REGISTER"])


async def register_server(sender: Any, *, server: Any, **kwargs: Any) -> None:
    """Register a server that runserver runs alone, at the port it really bound."""
    process = server.process
    if process is None or process.role != "server" or not _registers():
        return
    from microframe.discovery import build_registry

    registration = Registration(
        instance_from_settings(server.config.host, server.port), build_registry()
    )
    _registrations[server] = registration
    await registration.start()


async def register_pool(sender: Any, *, pool: Any, **kwargs: Any) -> None:
    """Register the pool's address once its workers answer the health service."""
    process = pool.process
    if process is None or not _registers():
        return
    from microframe.discovery import build_registry

    host, port = process.host, process.port
    local = format_address("127.0.0.1" if host.strip("[]") in WILDCARDS else host, port)
    grpc = dict_setting("GRPC")
    health = bool(grpc["HEALTH"]) and not grpc["TLS"]
    while not await wait_until_serving(local, POOL_WAIT_STEP, health=health):
        logger.warning("registry: workers are not serving on %s yet; registration waits", local)
    registration = Registration(instance_from_settings(host, port), build_registry())
    _registrations[pool] = registration
    await registration.start()


async def deregister(sender: Any, *, server: Any = None, pool: Any = None, **kwargs: Any) -> None:
    """Deregister the server or the pool stopping, if it was registered."""
    registration = _registrations.pop(server if pool is None else pool, None)
    if registration is not None:
        await registration.stop()


def connect() -> None:
    """Connect the receivers (the registry battery's ``ready()``)."""
    server_started.connect(register_server)
    server_stopping.connect(deregister)
    pool_started.connect(register_pool)
    pool_stopping.connect(deregister)
