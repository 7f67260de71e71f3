"""The client library: call other services by name, through discovery and the client chain."""

from microframe.client.client import DEFAULT_CLIENT_MIDDLEWARE, Client, ServiceClient
from microframe.client.direct import DirectDiscovery
from microframe.client.options import ClientOptions

__all__ = [
    "DEFAULT_CLIENT_MIDDLEWARE",
    "Client",
    "ClientOptions",
    "DirectDiscovery",
    "ServiceClient",
]
