"""The services the compiled protos declare, read from protoc's descriptor set."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class ServiceInfo(NamedTuple):
    proto: str  # "shop/orders.proto"
    name: str  # "Orders"
    methods: list[tuple[str, bool, bool]]  # (name, client streaming, server streaming)


def services_of(descriptor_set: Path, protos: list[Path]) -> list[ServiceInfo]:
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    ours = {p.as_posix() for p in protos}
    return [
        ServiceInfo(
            f.name, svc.name, [(m.name, m.client_streaming, m.server_streaming) for m in svc.method]
        )
        for f in fds.file if f.name in ours for svc in f.service
    ]
