"""One grpc.aio channel per instance address, shared by every client of the event loop.

A channel multiplexes every call to its instance over one HTTP/2 connection (no connection per
call); it is closed when no service known to a client lists its address any more.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

import grpc
import grpc.aio

from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import split_address
from microframe.utils.loops import PerLoop
from microframe.utils.timeouts import with_timeout

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


#: Seconds a channel to an address that refused to connect is kept after it is discarded.
DISCARD_DELAY = 5.0


def _close_soon(loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
    if not loop.is_closed():
        loop.create_task(channel.close())


#: Seconds a probe of an address may take at least, whatever the deadline of the call that
#: started it (other calls may wait for it longer).
MIN_PROBE_TIMEOUT = 1.0


async def probe_connection(address: str, timeout: float) -> bool:
    """Whether a TCP connection to ``address`` is accepted within ``timeout`` (it is closed at
    once). This costs a socket and a handshake, where a grpc channel costs a millisecond of
    the event loop and threads of grpc's own: it is what a client asks of an address it has
    no channel to yet, before making one."""
    loop = asyncio.get_running_loop()
    try:
        host, port = split_address(address)
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            target: tuple[Any, ...] = (host, port)
        except ValueError:  # a name
            infos = await with_timeout(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
            family, _, _, _, target = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await with_timeout(loop.sock_connect(sock, target), timeout)
        return True
    except (OSError, TimeoutError, ValueError):
        return False


_UNSETTLED = frozenset({grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING})


async def _settle(
    channel: grpc.aio.Channel, state: grpc.ChannelConnectivity
) -> grpc.ChannelConnectivity:
    while state in _UNSETTLED:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return state


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
        self._tls_keys: dict[str, set[str]] = {}  # address -> the TLS keys of its channels
        self._probes: dict[str, asyncio.Task[bool]] = {}  # address -> its probe under way
        # channel -> the task waiting for its connection attempt to end, shared by the calls
        # waiting for it (one grpc watch per channel, not one per call).
        self._settling: dict[grpc.aio.Channel, asyncio.Task[grpc.ChannelConnectivity]] = {}
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
            self._tls_keys.setdefault(address, set()).add(key[1])
            self.opened += 1
        if service is not None:
            # Every service listing the address owns its channel (one server process may
            # serve several): it is closed when none of them lists it any more.
            owners = self._owners.get(address)
            if owners is None:
                self._owners[address] = {service}
            elif service not in owners:
                owners.add(service)
        return channel

    def release(self, service: str, address: str) -> None:
        """``service`` no longer lists ``address``: close its channels if no service does."""
        owners = self._owners.get(address)
        if owners is None or service not in owners:
            return
        owners.discard(service)
        if owners:
            return
        del self._owners[address]
        for key in [(address, tls) for tls in self._tls_keys.pop(address, ())]:
            channel = self._channels.pop(key, None)
            if channel is not None:
                logger.info("client: closing the channel to %s (no longer in discovery)", address)
                asyncio.get_running_loop().create_task(channel.close(grace=5))

    def has(self, address: str) -> bool:
        """Whether a channel to ``address`` is open."""
        return address in self._tls_keys

    async def reachable(self, address: str, timeout: float) -> bool:
        """Whether ``address`` accepts a TCP connection within ``timeout`` seconds: one probe
        per address at a time, shared by the calls waiting for it (see
        :func:`probe_connection`)."""
        task = self._probes.get(address)
        if task is None:
            task = self._probes[address] = asyncio.get_running_loop().create_task(
                probe_connection(address, max(timeout, MIN_PROBE_TIMEOUT))
            )
            task.add_done_callback(lambda _, address=address: self._probes.pop(address, None))
        try:
            return await with_timeout(asyncio.shield(task), timeout)
        except TimeoutError:
            return False

    def settling(
        self, channel: grpc.aio.Channel, state: grpc.ChannelConnectivity
    ) -> asyncio.Task[grpc.ChannelConnectivity]:
        """The task that ends with the state ``channel`` settles in (READY, TRANSIENT_FAILURE
        or SHUTDOWN) from ``state``: one per channel, whatever the number of calls waiting
        (each bounds its own wait)."""
        task = self._settling.get(channel)
        if task is None or task.done():
            task = self._settling[channel] = asyncio.get_running_loop().create_task(
                _settle(channel, state)
            )
            task.add_done_callback(lambda done, channel=channel: self._settled(channel, done))
        return task

    def _settled(self, channel: grpc.aio.Channel, task: asyncio.Task[Any]) -> None:
        if self._settling.get(channel) is task:
            del self._settling[channel]

    def discard(self, address: str) -> None:
        """Close the channels to ``address`` now (it refused to connect: there is no
        connection to keep), so that a fleet of dead entries leaves no channel behind; the next
        call to it makes a new one."""
        loop = asyncio.get_running_loop()
        for tls in self._tls_keys.pop(address, ()):
            channel = self._channels.pop((address, tls), None)
            if channel is not None:
                # Later: calls of the moment may still be waiting for it to connect (they
                # give up within their CONNECT_TIMEOUT); new ones get a channel of their own.
                loop.call_later(DISCARD_DELAY, _close_soon, loop, channel)

    @property
    def open(self) -> int:
        """How many channels are open."""
        return len(self._channels)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._owners.clear()
        self._tls_keys.clear()
        for channel in channels:
            await channel.close()


_pools: PerLoop[ChannelPool] = PerLoop(ChannelPool)


def get_channel_pool() -> ChannelPool:
    """Return the channel pool of the running event loop."""
    return _pools.get()
