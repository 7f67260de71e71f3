"""One grpc.aio channel per instance address, shared by every client of the event loop.

A channel multiplexes every call to its instance over one HTTP/2 connection (no connection per
call); it is closed when no service known to a client lists its address any more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import grpc.aio

from microframe.core.exceptions import ImproperlyConfigured
from microframe.utils.loops import PerLoop

logger = logging.getLogger("microframe.client")

#: Channel arguments every client channel gets (the client's CHANNEL_OPTIONS come on top).
BASE_OPTIONS: tuple[tuple[str, Any], ...] = (
    # microframe retries itself, on another instance, within a budget.
    ("grpc.enable_retries", 0),
    # Reconnect quickly after an instance restarts.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def channel_credentials(tls: dict[str, Any]) -> tuple[grpc.ChannelCredentials, str | None]:
    """The channel credentials of client TLS options, and the server name to expect (if any)."""

    def read(key: str) -> bytes | None:
        path = tls.get(key)
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as err:
            raise ImproperlyConfigured(f'client TLS["{key}"] cannot be read: {err}') from err

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("CA"), private_key=read("KEY"), certificate_chain=read("CERT")
    )
    return credentials, tls.get("SERVER_NAME")


def tls_key(tls: dict[str, Any] | None) -> str:
    """The part of a channel's identity that its TLS settings make."""
    return repr(sorted(tls.items())) if tls else ""


class ChannelPool:
    """Channels by (address, TLS settings), and the services each address serves."""

    def __init__(self) -> None:
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._owners: dict[str, set[str]] = {}  # address -> services that listed it
        self.opened = 0

    def get(
        self,
        address: str,
        options: tuple[tuple[str, Any], ...] = (),
        tls: dict[str, Any] | None = None,
        service: str | None = None,
    ) -> grpc.aio.Channel:
        key = (address, tls_key(tls))
        channel = self._channels.get(key)
        if channel is None:
            args = list(BASE_OPTIONS) + list(options)
            if tls:
                credentials, server_name = channel_credentials(tls)
                if server_name:
                    args.append(("grpc.ssl_target_name_override", server_name))
                channel = grpc.aio.secure_channel(address, credentials, options=args)
            else:
                channel = grpc.aio.insecure_channel(address, options=args)
            self._channels[key] = channel
            self.opened += 1
            if service is not None:
                self._owners.setdefault(address, set()).add(service)
        return channel

    def retain(self, service: str, addresses: set[str]) -> None:
        """``service`` now lists ``addresses``: close the channels no service lists any more."""
        for address, owners in list(self._owners.items()):
            if service in owners and address not in addresses:
                owners.discard(service)
                if not owners:
                    del self._owners[address]
                    for key in [k for k in self._channels if k[0] == address]:
                        channel = self._channels.pop(key)
                        logger.info(
                            "client: closing the channel to %s (no longer in discovery)", address
                        )
                        asyncio.get_running_loop().create_task(channel.close(grace=5))
        for address in addresses:
            if address in self._owners:
                self._owners[address].add(service)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._owners.clear()
        for channel in channels:
            await channel.close()


_pools: PerLoop[ChannelPool] = PerLoop(ChannelPool)


def get_channel_pool() -> ChannelPool:
    """Return the channel pool of the running event loop."""
    return _pools.get()
