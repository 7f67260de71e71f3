"""microframe's way to etcd, shared by the registry (:mod:`microframe.contrib.registry.etcd`),
the configuration center (:mod:`microframe.contrib.config.etcd`) and the coordination battery
(:mod:`microframe.contrib.coordination`): an aetcd client that dials every member, over TLS and
with authentication when configured, its watch streams, what its errors mean, and
:class:`EtcdConnection`, the options every etcd user of microframe takes and the bounded,
retried requests they make."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import aetcd.watcher
import grpc
from aetcd import rpc as etcdrpc

from microframe.core.exceptions import ImproperlyConfigured
from microframe.discovery.instance import InvalidInstance, split_address
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.registry")

KEEPALIVE_PING_MS = 10_000  # HTTP/2 pings on idle-looking connections; etcd refuses < 5 s
MAX_MESSAGE_BYTES = 64 << 20

DEFAULT_ENDPOINTS = ("127.0.0.1:2379",)

Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")


class AuthenticationFailed(Exception):
    """etcd refused the user name or password."""


class WatchBroken(Exception):
    """etcd cancelled or ended a watch stream."""


class LeaseNotFound(Exception):
    """etcd no longer knows the lease (expired, revoked, data lost)."""


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """An aetcd client that dials every etcd member, over TLS when configured.

    aetcd 1.0's ``Client.connect()`` opens an insecure channel to one ``host:port``: it can
    neither fail over to another member when that one dies nor speak TLS. This subclass builds
    the channel itself and leaves every request to aetcd:

    - the target lists every member (``ipv4:10.0.0.1:2379,10.0.0.2:2379``) with the
      ``pick_first`` policy, so gRPC moves to the next member when the current one goes away.
      Host names are resolved here, at each connection, because gRPC's DNS resolver takes a
      single name; reconnection backoff is capped at 1 s so that the client is back within a
      second or so of etcd's return, rather than gRPC's default of up to two minutes;
    - with TLS options the channel uses ``grpc.ssl_channel_credentials`` (CA, client
      certificate and key) and checks every member's certificate against one ``server_name``;
    - connecting is bounded by ``dial_timeout`` and proves that a member answers: it
      authenticates (user and password) or asks for the member's status, so an unreachable
      cluster or bad credentials fail there with etcd's own reason.

    It also opens watch streams itself (:meth:`open_watch`): aetcd's shared ``Watcher`` ignores
    a watch that etcd cancels (permission denied, member without a leader) and a stream that
    ends, which would leave a watcher waiting forever, and hands out events one at a time,
    losing the boundaries of etcd's revisions. Every call carries the auth token, the watch
    streams and the lease keep-alives included.
    """

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        *,
        username: str | None,
        password: str | None,
        timeout: float,
        dial_timeout: float,
        credentials: grpc.ChannelCredentials | None,
        server_name: str | None,
    ) -> None:
        options: dict[str, Any] = {
            "grpc.lb_policy_name": "pick_first",
            "grpc.initial_reconnect_backoff_ms": 200,
            "grpc.max_reconnect_backoff_ms": 1000,
            # Despite its name, gRPC's bound on one connection attempt (default 20 s).
            "grpc.min_reconnect_backoff_ms": int(dial_timeout * 1000),
            "grpc.keepalive_time_ms": KEEPALIVE_PING_MS,
            "grpc.keepalive_timeout_ms": max(1000, int(timeout * 1000)),
            "grpc.http2.max_pings_without_data": 0,
            "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
            "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        }
        if credentials is not None and server_name:
            options["grpc.ssl_target_name_override"] = server_name
        host, port = addresses[0]
        super().__init__(
            host=host, port=port, username=username, password=password,
            timeout=timeout, options=options,
        )
        self._addresses = list(addresses)
        self._dial_timeout = dial_timeout
        self._credentials = credentials
        self._connect_lock = asyncio.Lock()
        self.watchstub: Any = None

    @property
    def connected(self) -> bool:
        return bool(self._connected.is_set())

    async def connect(self) -> None:
        """Open the channel and check that a member answers, within ``dial_timeout``."""
        async with self._connect_lock:
            if self._connected.is_set():
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._dial_timeout
            target = await self._target(deadline)
            options = list(self._options.items())
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            try:
                remaining = max(0.01, deadline - loop.time())
                if self._username is not None:
                    self.metadata = await self._authenticate(channel, remaining)
                else:
                    self.metadata = None
                    await etcdrpc.MaintenanceStub(channel).Status(
                        etcdrpc.StatusRequest(), timeout=remaining
                    )
            except BaseException:
                await channel.close()
                raise
            self.channel = channel
            self.auth_stub = etcdrpc.AuthStub(channel)
            self.kvstub = etcdrpc.KVStub(channel)
            self.clusterstub = etcdrpc.ClusterStub(channel)
            self.leasestub = etcdrpc.LeaseStub(channel)
            self.maintenancestub = etcdrpc.MaintenanceStub(channel)
            self.watchstub = etcdrpc.WatchStub(channel)
            self._watcher = aetcd.watcher.Watcher(
                self.watchstub, timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()

    async def reauthenticate(self, stale: Metadata | None) -> None:
        """Get a new token when etcd forgot ``stale`` (it keeps simple tokens in memory)."""
        async with self._connect_lock:
            if self.channel is None or self.metadata != stale:
                return  # closed, or another task already got a new token
            self.metadata = await self._authenticate(self.channel, self._timeout)
            old, self._watcher = self._watcher, aetcd.watcher.Watcher(
                self.watchstub, timeout=self._timeout, metadata=self.metadata
            )
            if old is not None:
                await old.shutdown()

    async def _authenticate(self, channel: grpc.aio.Channel, timeout: float) -> Metadata | None:
        request = etcdrpc.AuthenticateRequest(name=self._username, password=self._password)
        try:
            reply = await etcdrpc.AuthStub(channel).Authenticate(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if "authentication is not enabled" in details:
                return None  # etcd without auth: send no token, as etcd's own client does
            if "authentication failed" in details:
                raise AuthenticationFailed(details) from err
            raise
        return (("token", reply.token),)

    async def _target(self, deadline: float) -> str:
        """Return a gRPC target listing the addresses of every endpoint."""
        loop = asyncio.get_running_loop()
        found: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
        failures: list[str] = []
        for host, port in self._addresses:
            try:
                found.append((ipaddress.ip_address(host), port))
                continue
            except ValueError:
                pass
            try:
                infos = await with_timeout(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    max(0.01, deadline - loop.time()),
                )
            except (TimeoutError, OSError) as err:
                failures.append(f"{host}: {err or 'no answer from DNS'}")
                continue
            for info in infos:
                found.append((ipaddress.ip_address(str(info[4][0]).split("%")[0]), port))
        unique = list(dict.fromkeys(found))
        if not unique:
            raise OSError(f"cannot resolve {'; '.join(failures)}")
        if failures:
            logger.warning("etcd endpoints not resolved, skipped: %s", "; ".join(failures))
        v4 = [f"{ip}:{port}" for ip, port in unique if ip.version == 4]
        v6 = [f"[{ip}]:{port}" for ip, port in unique if ip.version == 6]
        # One gRPC target holds one address family; IPv4 wins when endpoints mix them.
        return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)

    async def get_page(
        self, key: bytes, range_end: bytes, *, limit: int, revision: int = 0
    ) -> Any:
        """One page of ``[key, range_end)``: at most ``limit`` keys in key order, at
        ``revision`` (0: the latest), as etcd's ``RangeResponse`` (``kvs``, ``more``, and the
        revision read in ``header``). aetcd's ``get_prefix`` has no limit: a large prefix
        would come in one message, over the message size cap."""
        request = etcdrpc.RangeRequest(
            key=key, range_end=range_end, limit=limit, revision=revision,
            sort_order=etcdrpc.RangeRequest.ASCEND, sort_target=etcdrpc.RangeRequest.KEY,
        )
        return await self.kvstub.Range(request, timeout=self._timeout, metadata=self.metadata)

    async def open_watch(self, key: bytes, range_end: bytes, start_revision: int) -> WatchStream:
        """Open a watch stream of ``[key, range_end)`` from ``start_revision``."""
        await self.connect()
        stream = WatchStream(self.watchstub, self.metadata, self._timeout)
        await stream.open(key, range_end, start_revision)
        return stream


class WatchStream:
    """One etcd watch on a stream of its own; :meth:`read` returns a response's events."""

    def __init__(self, stub: Any, metadata: Metadata | None, timeout: float) -> None:
        # "hasleader": etcd ends the stream when its member loses the cluster's leader, rather
        # than keeping a watch that no longer sees anything.
        self._call = stub.Watch(metadata=(*(metadata or ()), ("hasleader", "true")))
        self._timeout = timeout

    async def open(self, key: bytes, range_end: bytes, start_revision: int) -> None:
        request = etcdrpc.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision
        )
        try:
            await with_timeout(
                self._call.write(etcdrpc.WatchRequest(create_request=request)), self._timeout
            )
            while True:
                reply = await with_timeout(self._call.read(), self._timeout)
                self._check(reply)
                if reply.created:
                    return
        except TimeoutError:
            self.cancel()
            raise WatchBroken(f"etcd did not create the watch within {self._timeout} s") from None
        except BaseException:
            self.cancel()
            raise

    async def read(self) -> list[Any]:
        """Return the events of the next response that has some; raise when the watch ends."""
        while True:
            reply = await self._call.read()
            self._check(reply)
            if reply.events:
                return list(reply.events)

    @staticmethod
    def _check(reply: Any) -> None:
        if reply is grpc.aio.EOF:
            raise WatchBroken("etcd ended the watch stream")
        if reply.compact_revision:
            raise WatchBroken(f"revisions compacted up to {reply.compact_revision}")
        if reply.canceled:
            raise WatchBroken(f"etcd cancelled the watch: {reply.cancel_reason or 'no reason'}")

    def cancel(self) -> None:
        self._call.cancel()


def read_option_file(path: str | None, option: str, what: str = "etcd registry") -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ImproperlyConfigured(f"{what}: cannot read {option} {path!r}: {err}") from None


def grpc_status(err: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """Return the gRPC status code and details behind ``err`` (aetcd wraps them)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen.code(), seen.details() or ""
        if isinstance(seen, WatchBroken) and "invalid auth token" in str(seen):
            return grpc.StatusCode.UNAUTHENTICATED, str(seen)  # a watch refused at creation
        seen = seen.__cause__
    return None, str(err) or type(err).__name__


def describe_error(err: BaseException) -> str:
    code, details = grpc_status(err)
    return f"{code.name}: {details}" if code is not None else details




def parse_endpoints(
    endpoints: Sequence[str] | str, what: str = "etcd registry"
) -> tuple[list[str], list[tuple[str, int]], bool]:
    """Return the endpoints as given, their ``(host, port)``, and whether one said https."""
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise ImproperlyConfigured(
            f'{what}: endpoints must be a non-empty list of "host:port", not {endpoints!r}'
        )
    addresses = []
    https = False
    for endpoint in endpoints:
        bare = endpoint
        for scheme in ("http://", "https://"):
            if bare.startswith(scheme):
                https = https or scheme == "https://"
                bare = bare[len(scheme):]
        try:
            addresses.append(split_address(bare.rstrip("/")))
        except InvalidInstance as err:
            raise ImproperlyConfigured(f"{what}: bad endpoint {endpoint!r}: {err}") from None
    return list(endpoints), addresses, https


def being_cancelled() -> bool:
    """Return whether the current task itself has been asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EtcdConnection:
    """The connection of one etcd user (the registry, the config center, a lock): the options
    they all take, and :meth:`rpc`, a request bounded by ``timeout`` with etcd's errors mapped
    to ``error`` (the user's own "unavailable" exception).

    Options (the same for every user, see docs/topics/registry.md):

    - ``endpoints``: ``"host:port"`` of the members (a list, or one comma-separated string;
      ``http://`` or ``https://`` prefixes are accepted, ``https`` turning TLS on); default
      ``["127.0.0.1:2379"]``. The client talks to one member and moves to another when it
      goes away;
    - ``user``, ``password``: etcd authentication (both or neither);
    - ``ca_cert``, ``cert``, ``key``: PEM files for TLS: the CA that signed the members'
      certificates, and this client's certificate and key (for ``--client-cert-auth``). Any of
      them turns TLS on; without ``ca_cert`` the system's CAs are trusted;
    - ``server_name``: the name checked in the members' certificates, default the host of the
      first endpoint;
    - ``timeout``: seconds a request may take, default 5;
    - ``dial_timeout``: seconds to connect (and authenticate), default 2.

    ``what`` names the user in error messages ("etcd registry"); ``on_error(operation)`` is
    told of every failed request (the user's metrics).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str = DEFAULT_ENDPOINTS,
        *,
        user: str | None = None,
        password: str | None = None,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 5.0,
        dial_timeout: float = 2.0,
        server_name: str | None = None,
        what: str = "etcd",
        error: Callable[[str], Exception] = ConnectionError,
        closed_error: Callable[[str], Exception] = RuntimeError,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.what = what
        self.endpoints, self._addresses, https = parse_endpoints(endpoints, what)
        for name, value in (("timeout", timeout), ("dial_timeout", dial_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ImproperlyConfigured(
                    f"{what}: {name} must be a number of seconds > 0, not {value!r}"
                )
        if (user is None) != (password is None):
            raise ImproperlyConfigured(f"{what}: give both user and password, or neither")
        if (cert is None) != (key is None):
            raise ImproperlyConfigured(f"{what}: give both cert and key, or neither")
        self.user = user
        self.timeout = float(timeout)
        self.dial_timeout = float(dial_timeout)
        self._password = password
        self._credentials: grpc.ChannelCredentials | None = None
        if https or ca_cert or cert:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read_option_file(ca_cert, "ca_cert", what),
                private_key=read_option_file(key, "key", what),
                certificate_chain=read_option_file(cert, "cert", what),
            )
        self.server_name = server_name or self._addresses[0][0]
        self._error = error
        self._closed_error = closed_error
        self._on_error = on_error or (lambda operation: None)
        self.client: EtcdClient | None = None
        self.closed = False

    def where(self) -> str:
        return f"etcd at {', '.join(self.endpoints)}"

    async def connect(self) -> EtcdClient:
        """The connected client (connecting it first, within ``dial_timeout``)."""
        if self.closed:
            raise self._closed_error(f"{self.what} is closed")
        if self.client is None:
            self.client = EtcdClient(
                self._addresses,
                username=self.user,
                password=self._password,
                timeout=self.timeout,
                dial_timeout=self.dial_timeout,
                credentials=self._credentials,
                server_name=self.server_name if self._credentials is not None else None,
            )
        client = self.client
        if client.connected:
            return client
        try:
            await with_timeout(client.connect(), self.dial_timeout + 1)
        except asyncio.CancelledError:
            raise
        except AuthenticationFailed as err:
            self._on_error("connect")
            raise self._error(
                f"{self.where()}: authentication failed for user {self.user!r} ({err})"
            ) from None
        except Exception as err:
            self._on_error("connect")
            timed_out = grpc_status(err)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            if isinstance(err, TimeoutError) or timed_out:
                reason = f"no answer within {self.dial_timeout:g} s"
            else:
                reason = describe_error(err)
            raise self._error(f"cannot connect to {self.where()}: {reason}") from None
        return client

    async def rpc(
        self, operation: str, call: Callable[[EtcdClient], Awaitable[T]], *, patient: bool = False
    ) -> T:
        """Run ``call`` on the connected client, bounded by ``timeout``, with etcd errors mapped.

        An UNAVAILABLE answer is tried once more (gRPC moves to another member meanwhile), and
        an auth token etcd forgot (it keeps them in memory) is renewed once. A ``patient``
        call (a deregistration, which has no later chance) waits for the channel to connect
        again before its second try. A lease etcd does not know raises :class:`LeaseNotFound`.
        """
        retried = reauthenticated = False
        while True:
            client = await self.connect()
            metadata = client.metadata
            try:
                return await with_timeout(call(client), self.timeout + 1)
            except asyncio.CancelledError:
                if being_cancelled() or not self.closed:
                    raise
                raise self._closed_error(f"{self.what} was closed during {operation}") from None
            except Exception as err:
                code, details = grpc_status(err)
                if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
                    raise LeaseNotFound(details) from err
                if (
                    code == grpc.StatusCode.UNAUTHENTICATED
                    and "invalid auth token" in details
                    and self.user is not None
                    and not reauthenticated
                ):
                    reauthenticated = True
                    try:
                        await with_timeout(client.reauthenticate(metadata), self.timeout + 1)
                    except AuthenticationFailed as auth_err:
                        self._on_error(operation)
                        raise self._error(
                            f"{self.where()}: authentication failed for user {self.user!r} "
                            f"({auth_err})"
                        ) from None
                    except Exception as auth_err:
                        err = auth_err
                    else:
                        logger.info(
                            "etcd forgot the auth token of %r; authenticated again", self.user
                        )
                        continue
                if code == grpc.StatusCode.UNAVAILABLE and not retried:
                    retried = True
                    if patient:
                        await self._reconnected(client)
                    continue
                self._on_error(operation)
                raise self.unavailable(operation, err) from err

    async def _reconnected(self, client: EtcdClient) -> None:
        """Wait, up to ``timeout``, for the channel to be connected again.

        A call made while gRPC waits out its reconnection back-off fails at once with
        UNAVAILABLE; retrying at once would fail the same way, so that a deregistration made
        just after etcd came back would be lost (the key left to expire with its lease).
        """
        channel = client.channel
        if channel is None:
            return
        with contextlib.suppress(TimeoutError, grpc.aio.UsageError):
            await with_timeout(channel.channel_ready(), self.timeout)

    def unavailable(self, operation: str, err: BaseException) -> Exception:
        """The user's error for ``operation`` failing with ``err``, naming the endpoints."""
        code, details = grpc_status(err)
        if isinstance(err, TimeoutError) or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._error(
                f"{self.where()}: {operation} got no answer within {self.timeout:g} s"
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
            "user name is empty" in details or "permission denied" in details
        ):
            return self._error(f"{self.where()} refused {operation}: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return self._error(f"{self.where()} is unavailable ({operation}: {details})")
        return self._error(f"{self.where()}: {operation} failed: {details}")

    async def close(self) -> None:
        """Disconnect (within ``timeout``); requests made afterwards raise ``closed_error``."""
        self.closed = True
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):
                await with_timeout(client.close(), self.timeout)
