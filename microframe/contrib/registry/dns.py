"""DNS discovery (``microframe.contrib.registry.dns.DnsRegistry``), on dnspython: the instances
of a service are what a name resolves to, as Kubernetes publishes them.

- A plain name (``orders.shop.svc.cluster.local``, a headless service) resolves to A and AAAA
  records: one instance per address, on the service's port;
- a name starting with ``_`` (``_grpc._tcp.orders.shop.svc.cluster.local``) resolves to SRV
  records: one instance per record of the lowest priority, with the record's port and weight
  (its target resolved to its addresses).

A name is resolved again when its records' TTL runs out (within ``min_ttl`` and ``max_ttl``
seconds). A resolver that fails (no answer, SERVFAIL, a timeout) raises
:class:`~microframe.discovery.registry.RegistryUnavailable`: the discovery cache keeps the last
set it knew, and its disk snapshot, as for the other backends. A name that does not exist, or
has no record, is a service without instances.

Settings::

    REGISTRY = {
        "BACKEND": "microframe.contrib.registry.dns.DnsRegistry",
        "REGISTER": False,                  # the platform publishes the instances
        "OPTIONS": {
            "names": {"users": "_grpc._tcp.users.shop.svc.cluster.local"},
            "template": "{service}.shop.svc.cluster.local",   # the other services
            "port": 50051,
        },
    }

Registration belongs to the platform (Kubernetes endpoints, a DNS server's zone):
``register`` and ``deregister`` do nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

try:
    import dns.asyncresolver
    import dns.exception
    import dns.rdatatype
    import dns.resolver
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the DNS registry needs the dnspython package ({err}): pip install 'microframe-grpc[dns]'"
    ) from err

from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import ServiceInstance, format_address
from microframe.discovery.registry import RegistryUnavailable

__all__ = ["DnsRegistry"]

logger = logging.getLogger("microframe.registry")

BACKEND = "dns"


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ImproperlyConfigured(
            f"DNS registry: {name} must be a number of seconds > 0, not {value!r}"
        )
    return float(value)


def _nameserver(server: str) -> tuple[str, int]:
    """``(host, port)`` of ``"host"``, ``"host:port"``, ``"v6"`` or ``"[v6]:port"`` (port 53)."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif server.count(":") == 1:
        host, port = server.split(":")
    else:
        host, port = server, "53"
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"DNS registry: bad nameserver {server!r}")
    return host, int(port)


class DnsRegistry:
    """Find instances in DNS (see the module docstring).

    Options (``REGISTRY["OPTIONS"]``):

    - ``names``: ``{service: name}``, the name to resolve for a service (``name:port`` gives
      the port of its A/AAAA records);
    - ``template``: the name of the services ``names`` does not list, ``{service}`` standing
      for the service's name; default ``"{service}"``;
    - ``port``: the port of the instances found in A/AAAA records, default 50051;
    - ``nameservers``: the DNS servers to ask (``"host"`` or ``"host:port"``); default the
      system's (``/etc/resolv.conf``);
    - ``min_ttl``, ``max_ttl``: the bounds of the wait before a name is resolved again,
      default 1 and 30 seconds (a TTL of 0 would mean a query per call);
    - ``timeout``: seconds a resolution may take, default 2.
    """

    backend_name = BACKEND

    def __init__(
        self,
        names: Mapping[str, str] | None = None,
        template: str = "{service}",
        port: int = 50051,
        nameservers: Sequence[str] | None = None,
        min_ttl: float = 1.0,
        max_ttl: float = 30.0,
        timeout: float = 2.0,
    ) -> None:
        if names is not None and not (
            isinstance(names, Mapping) and all(isinstance(v, str) for v in names.values())
        ):
            raise ImproperlyConfigured(f"DNS registry: names must map services to names: {names!r}")
        if not isinstance(template, str) or "{service}" not in template:
            raise ImproperlyConfigured(
                f'DNS registry: template must contain "{{service}}", not {template!r}'
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ImproperlyConfigured(f"DNS registry: port must be 1-65535, not {port!r}")
        self.names = dict(names or {})
        self.template = template
        self.port = port
        self.min_ttl = _seconds("min_ttl", min_ttl)
        self.max_ttl = _seconds("max_ttl", max_ttl)
        if self.min_ttl > self.max_ttl:
            raise ImproperlyConfigured("DNS registry: min_ttl must not exceed max_ttl")
        self.timeout = _seconds("timeout", timeout)
        self._nameservers = list(nameservers) if nameservers else None
        self._resolver: dns.asyncresolver.Resolver | None = None

    def __repr__(self) -> str:
        servers = ",".join(self._nameservers) if self._nameservers else "system resolver"
        return f"<DnsRegistry {servers}>"

    # -- what a service resolves to ------------------------------------------------------------

    def name_of(self, service: str) -> tuple[str, int]:
        """The DNS name of ``service`` and the port of its A/AAAA instances."""
        name = self.names.get(service) or self.template.format(service=service)
        host, sep, port = name.rpartition(":")
        if sep and port.isdigit() and not name.startswith("_"):
            return host, int(port)
        return name, self.port

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                servers = [_nameserver(server) for server in self._nameservers]
                if len({port for _, port in servers}) > 1:
                    raise ImproperlyConfigured("DNS registry: nameservers must share one port")
                resolver.nameservers = [host for host, _ in servers]
                resolver.port = servers[0][1]
            resolver.lifetime = self.timeout
            self._resolver = resolver
        return self._resolver

    async def _query(self, name: str, rdtype: str) -> tuple[list[Any], float | None]:
        """The records of ``name`` and their TTL ([] and None when there are none)."""
        try:
            answer = await self.resolver().resolve(name, rdtype, lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], None
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout,
                OSError) as err:
            raise RegistryUnavailable(f"DNS: cannot resolve {name} ({rdtype}): {err}") from None
        except dns.exception.DNSException as err:
            raise RegistryUnavailable(f"DNS: cannot resolve {name} ({rdtype}): {err}") from None
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else None
        return list(answer), ttl

    async def _addresses(self, name: str) -> tuple[list[str], float | None]:
        """The addresses of ``name`` (A and AAAA, asked at once) and their TTL.

        When one family fails but the other answers with addresses, those are the instances
        (a server refusing AAAA queries for an IPv4-only zone is common), logged, and the name
        is asked again after ``min_ttl``; when both fail, or the one that answers has none,
        :class:`RegistryUnavailable` keeps the last known set.
        """
        results = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        found: list[str] = []
        ttls: list[float] = []
        failures: list[BaseException] = []
        for result in results:
            if isinstance(result, RegistryUnavailable):
                failures.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            records, ttl = result
            found.extend(r.address for r in records)
            if ttl is not None:
                ttls.append(ttl)
        if failures:
            if not found:
                raise failures[0]
            logger.warning("%s; using the %d addresses the other query found", failures[0],
                           len(found))
            ttls.append(self.min_ttl)
        return found, min(ttls) if ttls else None

    async def resolve(self, service: str) -> tuple[list[ServiceInstance], float]:
        """The instances of ``service`` now, and the seconds before resolving it again."""
        name, port = self.name_of(service)
        ttls: list[float] = []
        instances: dict[str, ServiceInstance] = {}
        if name.startswith("_"):
            records, ttl = await self._query(name, "SRV")
            if ttl is not None:
                ttls.append(ttl)
            if records:
                best = min(r.priority for r in records)
                for record in records:
                    if record.priority != best:
                        continue
                    target = record.target.to_text(omit_final_dot=True)
                    hosts, host_ttl = await self._addresses(target)
                    if host_ttl is not None:
                        ttls.append(host_ttl)
                    for host in hosts:
                        address = format_address(host, record.port)
                        instances[address] = ServiceInstance(
                            id=address, name=service, host=host, port=record.port,
                            weight=max(1, int(record.weight)), metadata={"dns": target},
                        )
        else:
            hosts, ttl = await self._addresses(name)
            if ttl is not None:
                ttls.append(ttl)
            for host in hosts:
                address = format_address(host, port)
                instances[address] = ServiceInstance(id=address, name=service, host=host,
                                                     port=port)
        wait = min(ttls) if ttls else self.max_ttl
        return sorted(instances.values(), key=lambda i: i.id), min(
            self.max_ttl, max(self.min_ttl, wait)
        )

    # -- the registry protocol -----------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        """Do nothing: DNS records are published by the platform (see the module docstring)."""
        logger.debug("DNS registry: %s/%s is published by the platform, not registered",
                     instance.name, instance.id)

    async def deregister(self, instance: ServiceInstance) -> None:
        """Do nothing (see :meth:`register`)."""

    async def instances(self, service: str) -> list[ServiceInstance]:
        return (await self.resolve(service))[0]

    async def watch(self, service: str) -> AsyncIterator[list[ServiceInstance]]:
        """Yield the instances of ``service``, then the new set each time a resolution, made
        when the records' TTL runs out, finds another one."""
        current, wait = await self.resolve(service)
        yield current
        while True:
            deadline = time.monotonic() + wait
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            found, wait = await self.resolve(service)
            if found != current:
                current = found
                yield current

    async def services(self) -> list[str]:
        """The services ``names`` lists (DNS cannot enumerate the others)."""
        return sorted(self.names)

    async def close(self) -> None:
        self._resolver = None
