"""The transport: what carries gRPC between the sockets and the server runtime.

The runtime (:class:`~microframe.core.server.Server`) builds the middleware chains and the
method handlers' logic; the transport makes the grpc server object those handlers are
registered on, says how a method is registered, and listens. It is the one seam where another
transport plugs in: the runtime holds no ``if`` on which one it runs on.

:class:`GrpcAioTransport` is grpc.aio: grpc core's HTTP/2 and the server arguments of
:meth:`~microframe.core.server.ServerConfig.channel_options`. Methods that take one request
message are registered request-streaming, so that a truncated or oversized request is
answered by microframe rather than dropped by grpc (see :mod:`microframe.core.handlers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio

from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.handlers import grpc_method_handler

if TYPE_CHECKING:
    from microframe.core.limits import CallLimits
    from microframe.core.middleware import Handler, RequestObserver
    from microframe.core.router import Route
    from microframe.core.server import ServerConfig

__all__ = ["GrpcAioTransport", "Transport", "server_credentials"]


class Transport(Protocol):
    """What the server runtime needs of a transport."""

    #: The name the logs and the checks show (``"grpc.aio"``).
    name: str

    def create(self, config: ServerConfig) -> grpc.aio.Server:
        """The grpc server object, with ``config``'s limits; on the running event loop."""
        ...

    def method_handler(
        self,
        route: Route,
        chain: Handler,
        limits: CallLimits,
        observers: Sequence[RequestObserver],
    ) -> grpc.RpcMethodHandler:
        """The handler ``route`` is registered with, serving ``chain`` within ``limits``."""
        ...

    def listen(self, server: grpc.aio.Server, address: str, config: ServerConfig) -> int:
        """Listen on ``address`` (with ``config.tls`` when set); return the port bound."""
        ...


class GrpcAioTransport:
    """grpc.aio, grpc core's own HTTP/2."""

    name = "grpc.aio"

    def create(self, config: ServerConfig) -> grpc.aio.Server:
        # MAX_CONCURRENT_RPCS is enforced by the method handlers, not by grpc (which would
        # refuse health checks and reflection too): see microframe.core.limits.
        return grpc.aio.server(options=config.channel_options())

    def method_handler(
        self,
        route: Route,
        chain: Handler,
        limits: CallLimits,
        observers: Sequence[RequestObserver],
    ) -> grpc.RpcMethodHandler:
        return grpc_method_handler(route, chain, limits, observers)

    def listen(self, server: grpc.aio.Server, address: str, config: ServerConfig) -> int:
        if config.tls:
            return server.add_secure_port(address, server_credentials(config.tls))
        return server.add_insecure_port(address)

    def __repr__(self) -> str:
        return f"<transport {self.name}>"


def server_credentials(tls: dict[str, Any]) -> grpc.ServerCredentials:
    """The credentials of ``GRPC["TLS"]`` (``CERT``, ``KEY``, and ``CLIENT_CA`` to require
    client certificates); ImproperlyConfigured when a file cannot be read."""
    try:
        with open(tls["CERT"], "rb") as f:
            cert = f.read()
        with open(tls["KEY"], "rb") as f:
            key = f.read()
        client_ca = None
        if tls.get("CLIENT_CA"):
            with open(tls["CLIENT_CA"], "rb") as f:
                client_ca = f.read()
    except (KeyError, OSError) as err:
        raise ImproperlyConfigured(f'GRPC["TLS"] is unusable: {err}') from err
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
