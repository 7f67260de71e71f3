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
import os
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

    @property
    def description(self) -> str:
        """In words: ``unary``, ``server streaming``, ``client streaming``, ``bidirectional``."""
        return _DESCRIPTIONS[self]

    @property
    def client_method(self) -> str:
        """The method of :class:`microframe.client.Client` that makes a call of this kind."""
        return "unary" if self is RpcKind.UNARY_UNARY else self.value

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
_DESCRIPTIONS = {
    RpcKind.UNARY_UNARY: "unary",
    RpcKind.UNARY_STREAM: "server streaming",
    RpcKind.STREAM_UNARY: "client streaming",
    RpcKind.STREAM_STREAM: "bidirectional",
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
    #: The longest a call may run on the server, in seconds (None: as long as its caller
    #: allows). The server sets it from ``GRPC["METHOD_TIMEOUTS"]`` when it builds the method's
    #: handler (:meth:`microframe.core.server.Server.build`).
    timeout: float | None = None

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


class RouterImportError(ImproperlyConfigured):
    """The module ROOT_ROUTER names exists, but importing it, or a module it imports, raised.

    ``error`` is what was raised; ``filename`` and ``lineno`` tell where: the line of a
    SyntaxError, else the innermost line of the traceback that is the service's own code (not
    the standard library, an installed package or microframe).
    """

    def __init__(self, path: str, error: BaseException) -> None:
        self.path = path
        self.error = error
        self.filename, self.lineno = error_location(error)
        if isinstance(error, SyntaxError) and error.msg:
            text = f"SyntaxError: {error.msg}"
        else:
            text = f"{type(error).__name__}: {error}"
        where = f" at {self.filename}:{self.lineno}" if self.filename else ""
        super().__init__(f"Importing ROOT_ROUTER {path!r} raised {text}{where}.")

    @property
    def hint(self) -> str:
        """What to do: fix the file where the error happened (ROOT_ROUTER itself is right); for
        genproto's router, the controller it names (the router is never edited)."""
        if self.filename and _generated_by_genproto(self.filename):
            missing = getattr(self.error, "name", None)
            owner = getattr(getattr(self.error, "obj", None), "__file__", None)
            restore = (
                f"Define {missing}() in {owner} again" if missing and owner
                else "Restore the controller function the error names"
            )
            return (
                f"{self.filename} is written by genproto (never edit it): it binds every RPC to "
                f"its controller function. {restore}, or run `python manage.py genproto`, which "
                "writes a stub for every RPC whose controller function is missing."
            )
        where = (
            f"{self.filename}, line {self.lineno}" if self.filename else "the module that raised"
        )
        install = ""
        if isinstance(self.error, ModuleNotFoundError) and self.error.name:
            install = (
                f" If {self.error.name!r} is a package, install it in this environment (and add "
                "it to requirements.txt)."
            )
        return (
            f"Fix {where}: the router module exists, but it, or a module it imports, raised "
            f"while being imported.{install} {self.traceback_command()} shows the whole traceback."
        )


    def traceback_command(self) -> str:
        """A shell command that imports the router where it imports (the directory on
        ``sys.path`` that holds its top package: for a service, the one above its own)."""
        import importlib.util
        import shlex

        top = self.path.partition(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        places = list(spec.submodule_search_locations or []) if spec else []
        command = f"python -c 'import {self.path}'"
        if places:
            command = f"cd {shlex.quote(os.path.dirname(os.path.abspath(places[0])))} && {command}"
        return f"`{command}`"


def _generated_by_genproto(filename: str) -> bool:
    """Tell whether ``filename`` starts with genproto's DO NOT EDIT header."""
    try:
        with open(filename, encoding="utf-8") as file:
            return file.readline().startswith("# Generated by microframe genproto")
    except (OSError, UnicodeDecodeError):
        return False


def _library_dirs() -> tuple[str, ...]:
    """The directories of code that is not the service's: the standard library, installed
    packages and microframe itself."""
    import sysconfig
    from pathlib import Path

    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.add(str(Path(__file__).resolve().parents[1]))
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def error_location(error: BaseException) -> tuple[str | None, int | None]:
    """Return the file and line where ``error`` was raised in the service's own code.

    A SyntaxError tells its own file and line. Otherwise: the innermost frame of the traceback
    outside the standard library, installed packages, microframe and the import machinery
    (``<frozen importlib._bootstrap>``); the innermost file when every frame is library code.
    """
    if isinstance(error, SyntaxError) and error.filename:
        return error.filename, error.lineno
    import traceback

    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")
    ]
    library = _library_dirs()
    own = [f for f in frames if not os.path.realpath(f.filename).startswith(library)]
    chosen = (own or frames)[-1:]
    if not chosen:
        return None, None
    return chosen[0].filename, chosen[0].lineno


def _names_missing_module(path: str, err: ModuleNotFoundError) -> bool:
    """Tell whether ``err`` is about ``path`` itself or one of its packages (not about a
    module that ``path``'s code imports)."""
    return bool(err.name) and (path == err.name or path.startswith(f"{err.name}."))


def get_router_module(path: str | None) -> ModuleType:
    """Import the router module named by ``path`` (ROOT_ROUTER).

    Raise ImproperlyConfigured when the module (or its package) does not exist, and
    :class:`RouterImportError` when it exists but importing it, or a module it imports,
    raised.
    """
    if not path:
        raise ImproperlyConfigured("ROOT_ROUTER is not set: name the module holding `routes`.")
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as err:
        if _names_missing_module(path, err):
            raise ImproperlyConfigured(f"ROOT_ROUTER {path!r} cannot be imported: {err}") from err
        raise RouterImportError(path, err) from err
    except Exception as err:
        raise RouterImportError(path, err) from err


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
                f"Router {path!r}: {entry!r} is not a Route "
                "(build routes with microframe.core.router.rpc)."
            )
        if not callable(entry.controller):
            raise ImproperlyConfigured(
                f"Router {path!r}: the controller of {entry.full_method} is not callable: "
                f"{entry.controller!r}."
            )
        if entry.full_method in seen:
            raise ImproperlyConfigured(f"Router {path!r}: {entry.full_method} is routed twice.")
        seen.add(entry.full_method)
        routes.append(entry)
    return routes
