"""``call SERVICE.Method [JSON]``: call any RPC by name, with protobuf JSON in and out.

::

    python manage.py call helloworld.Greeter/SayHello '{"name": "Ada"}'
    python manage.py call orders.Orders.Get '{"id": 1}' --service orders --timeout 0.5
    python manage.py call helloworld.Greeter/LotsOfGreetings '[{"name": "a"}, {"name": "b"}]'
    microframe-admin call helloworld.Greeter/SayHello --address 10.0.0.5:50051 --reflection

The method is ``package.Service/Method`` (``package.Service.Method``, or ``Service/Method`` when
the name is unique, are accepted too). Its descriptors come from the service's generated code
(every ``*_pb2`` module of ``generate/``, plus the health service), or, with ``--reflection``,
from the server's reflection service.

The call goes through the client library: discovery and the client chain (deadline, metrics,
breaker, balancer, retry) under the registry name given by ``--service`` (default: this
service's ``SERVICE_NAME`` when its router serves the method or for health and reflection,
else the proto package), or straight to ``--address HOST:PORT``; when discovery knows no
instance the command says how to fix it instead of calling. The request is one JSON object, or
a JSON array of them for a client-streaming method; ``-`` reads it from stdin and ``@file``
from a file. Every reply is printed as protobuf JSON as it arrives. A failed call prints
``ERROR: <CODE>: <message>`` on stderr, then its details (``google.rpc.BadRequest``,
``ErrorInfo``, ``RetryInfo``... of its ``grpc-status-details-bin``) as a JSON array in the
protobuf JSON mapping, each with its ``@type``, when it has some, and exits with 64 + the
numeric status code (as grpcurl does).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

from microframe.core.descriptors import LocalService, find_service
from microframe.core.exceptions import ImproperlyConfigured, RpcError
from microframe.management.base import BaseCommand, CommandError, CommandParser
from microframe.utils.protojson import message_class, parse_requests, to_json

#: Exit status of a call answered with status code ``c``: ``EXIT_BASE + c.value[0]``.
EXIT_BASE = 64


def parse_method(target: str) -> tuple[str, str]:
    """Split ``pkg.Service/Method``, ``/pkg.Service/Method`` or ``pkg.Service.Method``."""
    text = target.strip().lstrip("/")
    if "/" in text:
        service, _, method = text.partition("/")
    else:
        service, _, method = text.rpartition(".")
    if not service or not method or "/" in method:
        raise CommandError(
            f"{target!r} is not a method: write package.Service/Method (or package.Service.Method)."
        )
    return service, method


def parse_metadata(pairs: list[str]) -> list[tuple[str, Any]]:
    """``k=v`` pairs as gRPC metadata (keys lower case; ``-bin`` values base64-decoded)."""
    metadata: list[tuple[str, Any]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise CommandError(f"--metadata {pair!r} is not key=value.")
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value, validate=True)))
            except ValueError:
                raise CommandError(f"--metadata {key}: a -bin value must be base64.") from None
        else:
            metadata.append((key, value))
    return metadata


def read_request(text: str | None) -> Any:
    """The request(s) as JSON values: ``text``, stdin for ``-``, a file for ``@path``."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as err:
            raise CommandError(
                f"Cannot read the request from {text[1:]}: {err.strerror}."
            ) from None
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise CommandError(f"The request is not JSON: {err}.") from None


def _with_deadline(channel: Any, timeout: float) -> Any:
    """``channel`` with ``timeout`` on every streaming call (grpcio-reflection's database sets
    none: a server that accepts the call and never answers would hang the command)."""
    import grpc

    class Details(grpc.ClientCallDetails):
        def __init__(self, original: Any) -> None:
            self.method = original.method
            self.timeout = timeout
            self.metadata = original.metadata
            self.credentials = original.credentials
            self.wait_for_ready = original.wait_for_ready
            self.compression = original.compression

    class Deadline(grpc.StreamStreamClientInterceptor):
        def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            return continuation(Details(details), requests)

    return grpc.intercept_channel(channel, Deadline())


def reflection_pool(
    address: str, timeout: float, tls: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """A descriptor pool fed by the server's reflection service, and its database (the server
    must answer, the connection and each reflection call, within ``timeout`` seconds)."""
    import grpc
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from microframe.client.channels import channel_credentials

    if tls:
        credentials, server_name = channel_credentials(tls)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise CommandError(f"Reflection: {address} did not answer within {timeout:g} s.") from None
    database = ProtoReflectionDescriptorDatabase(_with_deadline(channel, timeout))
    return descriptor_pool.DescriptorPool(database), database


class Command(BaseCommand):
    help = (
        "Call an RPC by name (package.Service/Method) with a protobuf JSON request, through "
        "discovery and the client chain or straight to --address; print the replies as JSON."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("method", help="package.Service/Method (or package.Service.Method).")
        parser.add_argument(
            "request", nargs="?",
            help="The request as protobuf JSON (default {}); a JSON array streams several to a "
                 "client-streaming method; - reads stdin, @FILE a file.",
        )
        parser.add_argument(
            "--address", help="HOST:PORT to call, instead of discovering the service."
        )
        parser.add_argument(
            "--service",
            help="The registry name to discover (default: SERVICE_NAME when this service serves "
                 "the method, else the proto package).",
        )
        parser.add_argument("--timeout", type=float, help="Deadline of the call, in seconds.")
        parser.add_argument(
            "--metadata", "-H", action="append", default=[], metavar="KEY=VALUE",
            help="Request metadata (repeat for more); a -bin key takes base64.",
        )
        parser.add_argument(
            "--reflection", action="store_true",
            help="Read the method's descriptors from the server's reflection service instead of "
                 "the local generated code.",
        )
        parser.add_argument(
            "--tls-ca", metavar="FILE", help="Call over TLS, trusting this CA (PEM)."
        )
        parser.add_argument(
            "--tls-cert", metavar="FILE", help="Client certificate (PEM), for mTLS."
        )
        parser.add_argument("--tls-key", metavar="FILE", help="Its private key (PEM).")
        parser.add_argument(
            "--tls-server-name", metavar="NAME", help="The name the server's certificate must have."
        )
        parser.add_argument(
            "--emit-defaults", action="store_true",
            help="Print fields that hold their default value.",
        )
        parser.add_argument("--compact", action="store_true", help="One line of JSON per reply.")

    def handle(self, *args: Any, **options: Any) -> None:
        service_name, method_name = parse_method(options["method"])
        metadata = parse_metadata(options["metadata"])
        request_json = read_request(options["request"])
        if options["timeout"] is not None and options["timeout"] <= 0:
            raise CommandError("--timeout must be a positive number of seconds.")
        if options["address"]:
            from microframe.discovery.instance import InvalidInstance, split_address

            try:
                split_address(options["address"])
            except InvalidInstance as err:
                raise CommandError(f"--address: {err}.") from None
        code = asyncio.run(self._call(service_name, method_name, request_json, metadata, options))
        if code:
            sys.exit(code)

    async def _call(
        self, service_name: str, method_name: str, request_json: Any,
        metadata: list[tuple[str, Any]], options: dict[str, Any],
    ) -> int:
        from microframe.client import Client

        address: str | None = options["address"]
        tls = _tls_options(options)
        local = _local_service()
        registry_name = options["service"]
        if options["reflection"]:
            if address is None:
                given = registry_name is not None
                registry_name = registry_name or local.registry_name(service_name)
                found = await _instances(registry_name, local, service_name, given)
                address = str(found[0].address)
            if tls is None:  # the client's own TLS options, as the call itself will use them
                from microframe.client import ClientOptions

                tls = ClientOptions.resolve(registry_name or local.registry_name(service_name)).tls
            pool, database = await asyncio.to_thread(
                reflection_pool, address, options["timeout"] or 10.0, tls
            )
            try:
                known = await asyncio.to_thread(database.get_services)
            except Exception as err:  # grpc.RpcError: the server has no reflection, or is down
                raise CommandError(f"Reflection on {address} failed: {_describe(err)}") from None
            service = await asyncio.to_thread(_find, pool, service_name, list(known))
        else:
            service = _find(local.pool, service_name, sorted(local.services))
        method = service.methods_by_name.get(method_name)
        if method is None:
            raise CommandError(
                f"{service.full_name} has no method {method_name!r}; its methods: "
                f"{', '.join(service.methods_by_name)}."
            )
        given = registry_name is not None
        registry_name = registry_name or local.registry_name(service.full_name)
        if address is None:  # say how to fix it rather than answer UNAVAILABLE
            await _instances(registry_name, local, service.full_name, given)
        request_class = message_class(method.input_type)
        reply_class = message_class(method.output_type)
        try:
            requests = parse_requests(request_json, request_class, method.client_streaming)
        except ValueError as err:
            raise CommandError(str(err)) from None
        client_options: dict[str, Any] = {"tls": tls} if tls else {}
        if address:
            client = Client(registry_name, address=address, **client_options)
        else:
            client = Client(registry_name, **client_options)
        path = f"/{service.full_name}/{method.name}"
        call_options = {"timeout": options["timeout"], "metadata": metadata}
        try:
            if method.client_streaming and method.server_streaming:
                replies = client.stream_stream(path, requests, reply_class, **call_options)
                async for reply in replies:
                    self._print(reply, options)
            elif method.client_streaming:
                reply = await client.stream_unary(path, requests, reply_class, **call_options)
                self._print(reply, options)
            elif method.server_streaming:
                replies = client.unary_stream(path, requests[0], reply_class, **call_options)
                async for reply in replies:
                    self._print(reply, options)
            else:
                reply = await client.unary(path, requests[0], reply_class, **call_options)
                self._print(reply, options)
        except RpcError as err:
            self._print_error(err, options)
            return EXIT_BASE + err.code.value[0]
        return 0

    def _print_error(self, err: RpcError, options: dict[str, Any]) -> None:
        """Write the status, the message and the details of ``err`` on stderr."""
        from microframe.core.error_details import details_json

        self.stderr.write(f"ERROR: {err.code.name}: {err.message}")
        if err.details:
            indent = None if options["compact"] else 2
            self.stderr.write(json.dumps(details_json(err.details), indent=indent))
        self.stderr.flush()

    def _print(self, reply: Any, options: dict[str, Any]) -> None:
        indent = None if options["compact"] else 2
        self.stdout.write(to_json(reply, indent=indent, emit_defaults=options["emit_defaults"]))
        self.stdout.flush()


def _tls_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """The client TLS options of ``--tls-*`` (None: the client's own, plaintext by default)."""
    given = {"CA": options["tls_ca"], "CERT": options["tls_cert"], "KEY": options["tls_key"],
             "SERVER_NAME": options["tls_server_name"]}
    if not any(given.values()):
        return None
    if bool(given["CERT"]) != bool(given["KEY"]):
        raise CommandError("--tls-cert and --tls-key go together.")
    for key in ("CA", "CERT", "KEY"):
        if given[key] and not Path(given[key]).is_file():
            raise CommandError(f"--tls-{key.lower()}: {given[key]} is not a file.")
    return {k: v for k, v in given.items() if v}


def _local_service() -> LocalService:
    """The current service; outside any service (``microframe-admin call``), the defaults."""
    from microframe.conf import ENVIRONMENT_VARIABLE, settings

    if not settings.configured and not os.environ.get(ENVIRONMENT_VARIABLE):
        settings.configure()
    return LocalService()


def _find(pool: Any, name: str, known: list[str]) -> Any:
    try:
        return find_service(pool, name, known)
    except LookupError as err:
        raise CommandError(
            f"{err} Call from the directory of the service that defines it (python manage.py "
            "call), or ask the server with --reflection."
        ) from None


async def _instances(
    registry_name: str, local: LocalService, full_service: str, given: bool
) -> list[Any]:
    """The instances of ``registry_name`` that discovery knows; a CommandError saying how to
    fix it (which registry was searched, --address, starting or registering the service) when
    there are none or the registry cannot say. ``given``: the name came from --service."""
    from microframe.discovery import RegistryError, describe_registry
    from microframe.discovery.cache import get_discovery_cache

    try:
        cache = get_discovery_cache()
        where = describe_registry(cache.registry)
        instances = await cache.instances(registry_name)
    except (RegistryError, ImproperlyConfigured) as err:
        fix = _how_to_fix(registry_name, local, full_service, given)
        raise CommandError(f"Cannot discover {registry_name!r}: {err}. {fix}") from None
    if not instances:
        raise CommandError(
            f"No instance of {registry_name!r} is registered in {where}. "
            + _how_to_fix(registry_name, local, full_service, given)
        )
    return list(instances)


def _how_to_fix(registry_name: str, local: LocalService, full_service: str, given: bool) -> str:
    """What to do when discovery finds no instance of ``registry_name``."""
    from microframe.conf import settings

    if given:
        whose = f"{registry_name!r} is the name given with --service"
    elif local.is_own(full_service) and not getattr(settings, "SETTINGS_MODULE", None):
        whose = (f"no service's settings are in force, so {full_service} is looked for under the "
                 f"default SERVICE_NAME {registry_name!r}: run python manage.py call from the "
                 "service's directory, or give --settings or --service")
    elif local.is_own(full_service):
        whose = (f"{registry_name!r} is this service's SERVICE_NAME, which serves {full_service}; "
                 f"its settings serve it on {settings.GRPC['HOST']}:{settings.GRPC['PORT']}")
    else:
        whose = (f"{registry_name!r} is the proto package of {full_service}: if the service is "
                 "registered under another name, give it with --service NAME")
    return (
        f"({whose}.) Call a server directly with --address HOST:PORT, or start the service "
        "(python manage.py runserver registers it while it serves), or register a running one "
        "(python manage.py register HOST:PORT), with the same REGISTRY settings."
    )


def _describe(err: BaseException) -> str:
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(err)
