"""Registering the serving instance: what is advertised (:func:`instance_from_settings`), and
a registration's life (:class:`Registration`). When runserver registers is the battery's
receivers' business (:mod:`microframe.contrib.registry.serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from microframe.conf import dict_setting
from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import ServiceInstance, split_address
from microframe.discovery.registry import Registry, RegistryError
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.registry")

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def primary_address(family: int = socket.AF_INET) -> str:
    """Return this host's address on its default route (no packet is sent), or loopback."""
    probe = "10.255.255.255" if family == socket.AF_INET else "fd00::1"
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((probe, 1))
        return str(s.getsockname()[0])
    return "127.0.0.1" if family == socket.AF_INET else "::1"


def advertised_address(host: str, port: int) -> tuple[str, int]:
    """Return the ``(host, port)`` to publish for a server bound to ``host:port``.

    ``REGISTRY["ADVERTISE"]`` wins ("host:port", or "host" to keep the port served); else the
    bound host, unless it is a wildcard (0.0.0.0, ::), which no client can dial: then this
    host's primary address.
    """
    from microframe.conf import settings

    advertise = settings.REGISTRY.get("ADVERTISE")
    if advertise:
        text = str(advertise)
        try:
            return split_address(text)
        except ValueError:
            pass
        if ":" in text.strip("[]") and text.count(":") == 1:
            raise ImproperlyConfigured(f'REGISTRY["ADVERTISE"] {text!r} is not HOST:PORT or HOST.')
        return text.strip("[]"), port
    bare = host.strip("[]")
    if bare in WILDCARDS:
        return primary_address(socket.AF_INET6 if bare == "::" else socket.AF_INET), port
    return bare, port


def instance_from_settings(host: str, port: int, name: str | None = None) -> ServiceInstance:
    """Return the instance this process advertises when it serves on ``host:port``.

    ``name`` defaults to ``SERVICE_NAME``.
    """
    from microframe.conf import settings

    config = dict_setting("REGISTRY")
    adv_host, adv_port = advertised_address(host, port)
    instance_id = config.get("INSTANCE_ID") or f"{adv_host}:{adv_port}"
    try:
        return ServiceInstance(
            id=str(instance_id),
            name=name or settings.SERVICE_NAME,
            host=adv_host,
            port=adv_port,
            weight=int(config["WEIGHT"]),
            metadata={str(k): str(v) for k, v in (config.get("METADATA") or {}).items()},
            version=str(config.get("VERSION") or ""),
        )
    except ValueError as err:
        raise ImproperlyConfigured(f"The instance to register is invalid: {err}") from err


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Registration:
    """Keep ``instance`` registered in ``registry`` between :meth:`start` and :meth:`stop`."""

    def __init__(
        self, instance: ServiceInstance, registry: Registry, *, timeout: float = 5.0
    ) -> None:
        self.instance = instance
        self.registry = registry
        self.timeout = timeout
        self.registered = False

    @property
    def backend(self) -> str:
        return str(getattr(self.registry, "backend_name", type(self.registry).__name__))

    async def start(self) -> None:
        """Register; when the registry is unreachable, log it and let the backend keep trying."""
        instance = self.instance
        try:
            await with_timeout(self.registry.register(instance), self.timeout)
        except (RegistryError, TimeoutError) as err:
            logger.warning(
                "registry: %s not registered yet in %s (%s); serving anyway, retrying in the "
                "background",
                instance.id, self.backend, err or "timed out",
            )
            return
        self.registered = True
        logger.info(
            "registry: registered %s as %s at %s in %s",
            instance.id, instance.name, instance.address, self.backend,
        )

    async def stop(self) -> None:
        """Deregister at once (bounded by the timeout), then close the registry."""
        try:
            await with_timeout(self.registry.deregister(self.instance), self.timeout)
            logger.info("registry: deregistered %s", self.instance.id)
        except (RegistryError, TimeoutError) as err:
            logger.warning(
                "registry: could not deregister %s (%s); it expires with its TTL",
                self.instance.id, err or "timed out",
            )
        with contextlib.suppress(Exception):
            await with_timeout(self.registry.close(), self.timeout)


async def wait_until_serving(address: str, timeout: float, *, health: bool = True) -> bool:
    """Poll the gRPC health service at ``address`` until it says SERVING (True) or ``timeout``.

    With ``health=False`` (a TLS server, or health switched off) only wait until the port
    accepts connections.
    """
    import grpc
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if not health:
        host, port = split_address(address)
        while loop.time() < deadline:
            try:
                _, writer = await with_timeout(asyncio.open_connection(host, port), 1)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return True
        return False
    # Workers may not listen yet: retry the connection every 100 ms, not grpc's default 1 s+.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    return False
