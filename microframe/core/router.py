"""Routes: every RPC of a service bound to its controller.

``ROOT_ROUTER`` names a module with a ``routes`` list (genproto writes it)::

    from microframe.core.router import rpc
    from example.generate import hello_pb2
    from example.controller import greeter

    Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]
    routes = [
        rpc(Greeter, "SayHello", greeter.say_hello),
        rpc(Greeter, "LotsOfReplies", greeter.lots_of_replies, middleware=["myapp.mw.Audit"]),
    ]

The RPC kind and the message classes come from the proto descriptor, so a route cannot
disagree with the proto.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from microframe.core.exceptions import ImproperlyConfigured


class RpcKind(enum.StrEnum):
    """The four kinds of RPC, named as grpc names its method handlers."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def client_streaming(self) -> bool:
        return self in (RpcKind.STREAM_UNARY, RpcKind.STREAM_STREAM)

    @property
    def server_streaming(self) -> bool:
        return self in (RpcKind.UNARY_STREAM, RpcKind.STREAM_STREAM)

    @property
    def grpc_type(self) -> str:
        """Name used in the ``grpc_type`` label of go-grpc-prometheus."""
        return _GRPC_TYPES[self]

    @classmethod
    def of(cls, client_streaming: bool, server_streaming: bool) -> RpcKind:
        if client_streaming:
            return cls.STREAM_STREAM if server_streaming else cls.STREAM_UNARY
        return cls.UNARY_STREAM if server_streaming else cls.UNARY_UNARY


_GRPC_TYPES = {
    RpcKind.UNARY_UNARY: "unary",
    RpcKind.UNARY_STREAM: "server_stream",
    RpcKind.STREAM_UNARY: "client_stream",
    RpcKind.STREAM_STREAM: "bidi_stream",
}


@dataclass(frozen=True)
class Route:
    """One RPC method bound to its controller, with per-method middleware extras."""

    service: str  # full service name, e.g. "helloworld.Greeter"
    method: str  # method name, e.g. "SayHello"
    controller: Callable[..., Any]
    request_class: type[Message]
    response_class: type[Message]
    kind: RpcKind
    middleware: tuple[Any, ...] = field(default=())

    @property
    def full_method(self) -> str:
        """Return the HTTP/2 path of the method: ``/package.Service/Method``."""
        return f"/{self.service}/{self.method}"


def rpc(
    service: ServiceDescriptor,
    method: str,
    controller: Callable[..., Any],
    *,
    middleware: Sequence[Any] = (),
) -> Route:
    """Bind ``method`` of the proto ``service`` to ``controller``."""
    try:
        desc: MethodDescriptor = service.methods_by_name[method]
    except KeyError:
        raise ImproperlyConfigured(
            f"Service {service.full_name} has no method {method!r} "
            f"(it has: {', '.join(service.methods_by_name)})."
        ) from None
    return Route(
        service=service.full_name,
        method=method,
        controller=controller,
        request_class=message_factory.GetMessageClass(desc.input_type),
        response_class=message_factory.GetMessageClass(desc.output_type),
        kind=RpcKind.of(desc.client_streaming, desc.server_streaming),
        middleware=tuple(middleware),
    )


def _flatten(items: Iterable[Any]) -> Iterable[Any]:
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item


def get_router_module(path: str | None) -> ModuleType:
    """Import the router module named by ``path`` (ROOT_ROUTER)."""
    if not path:
        raise ImproperlyConfigured("ROOT_ROUTER is not set: name the module holding `routes`.")
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as err:
        if err.name and path.startswith(err.name):
            raise ImproperlyConfigured(f"ROOT_ROUTER {path!r} cannot be imported: {err}") from err
        raise


def load_routes(path: str | None) -> list[Route]:
    """Return the routes of the router module ``path``, validated.

    Raise ImproperlyConfigured for a module without ``routes``, an entry that is not a Route,
    a controller that is not callable, or the same method routed twice.
    """
    module = get_router_module(path)
    raw = getattr(module, "routes", None)
    if raw is None:
        raise ImproperlyConfigured(f"Router module {path!r} has no `routes` list.")
    routes: list[Route] = []
    seen: set[str] = set()
    for entry in _flatten(raw):
        if not isinstance(entry, Route):
            raise ImproperlyConfigured(
                f"Router {path!r}: {entry!r} is not a Route (build routes with microframe.core.router.rpc)."
            )
        if not callable(entry.controller):
            raise ImproperlyConfigured(
                f"Router {path!r}: the controller of {entry.full_method} is not callable: {entry.controller!r}."
            )
        if entry.full_method in seen:
            raise ImproperlyConfigured(f"Router {path!r}: {entry.full_method} is routed twice.")
        seen.add(entry.full_method)
        routes.append(entry)
    return routes
