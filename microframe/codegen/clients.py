"""The typed client modules: ``<proto>_client.py`` with a ``ServiceClient`` subclass per
service of the proto, one typed method per RPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microframe.codegen.naming import HEADER, module_of, relative_import
from microframe.core.router import RpcKind


def typed_clients(descriptor_set: Path, protos: list[Path]) -> dict[Path, str]:
    """``<proto>_client.py`` for every proto that declares services: a ``ServiceClient``
    subclass per service, one typed method per RPC (the client library's call shapes)."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    where: dict[str, tuple[str, str]] = {}  # ".pkg.Message" -> (proto file, "Message" path)
    for f in fds.file:
        prefix = f".{f.package}" if f.package else ""

        def walk(messages: Any, outer: str, file: str = f.name, prefix: str = prefix) -> None:
            for m in messages:
                name = f"{outer}.{m.name}" if outer else m.name
                where[f"{prefix}.{name}"] = (file, name)
                walk(m.nested_type, name)

        walk(f.message_type, "")
    ours = {p.as_posix() for p in protos}
    files: dict[Path, str] = {}
    for f in fds.file:
        if f.name not in ours or not f.service:
            continue
        module_dir = Path(f.name).parent
        imports: dict[str, str] = {}  # module -> alias

        def type_ref(full_name: str, imports: dict[str, str] = imports) -> str:
            file, name = where[full_name]
            module = module_of(file)
            if file.startswith("google/protobuf/"):
                alias = "google_" + module.rsplit(".", 1)[1]
                imports[f"google.protobuf.{module.rsplit('.', 1)[1]}"] = alias
            else:
                alias = module.replace(".", "_")
                imports[module] = alias
            return f"{alias}.{name}"

        classes = []
        for service in f.service:
            full = f"{f.package}.{service.name}" if f.package else service.name
            methods = []
            for m in service.method:
                req, rep = type_ref(m.input_type), type_ref(m.output_type)
                sig_common = "*, timeout: float | None = None, metadata: Any = None"
                call_args = (
                    f'self._path("{m.name}"), {{arg}}, {rep}, timeout=timeout, metadata=metadata'
                )
                if m.client_streaming:
                    param = f"requests: Iterable[{req}] | AsyncIterable[{req}]"
                    arg = "requests"
                else:
                    param = f"request: {req}"
                    arg = "request"
                args = call_args.format(arg=arg)
                kind = RpcKind.of(m.client_streaming, m.server_streaming).client_method
                if m.server_streaming:
                    methods.append(
                        f"    def {m.name}(self, {param}, {sig_common}) -> AsyncIterator[{rep}]:\n"
                        f"        return self.client.{kind}({args})\n"
                    )
                else:
                    methods.append(
                        f"    async def {m.name}(self, {param}, {sig_common}) -> {rep}:\n"
                        f"        return await self.client.{kind}({args})\n"
                    )
            classes.append(
                f"class {service.name}Client(ServiceClient):\n"
                f'    """Calls of {full}: ``await {service.name}Client'
                f'("<registered service name>").<Rpc>(request)``."""\n\n'
                f'    grpc_service = "{full}"\n\n' + "\n".join(methods)
            )
        import_lines = []
        for module, alias in sorted(imports.items()):
            if module.startswith("google.protobuf."):
                name = module.rsplit(".", 1)[1]
                import_lines.append(f"from google.protobuf import {name} as {alias}")
            else:
                package, _, name = module.rpartition(".")
                relative = relative_import(package, module_dir)
                import_lines.append(f"from {relative} import {name} as {alias}")
        text = (
            HEADER.format(source=f"idl/{f.name}")
            + f'"""Typed clients of the services of {f.name}, on the client library."""\n\n'
            "from __future__ import annotations\n\n"
            "from collections.abc import AsyncIterable, AsyncIterator, Iterable  # noqa: F401\n"
            "from typing import Any\n\n"
            "from microframe.client import ServiceClient\n\n"
            + "\n".join(import_lines) + "\n\n\n" + "\n\n".join(classes)
        )
        files[Path(f.name[: -len(".proto")] + "_client.py")] = text
    return files
