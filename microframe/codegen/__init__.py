"""What ``genproto`` does, as a library: compile the protos (:mod:`.protoc`), write the typed
clients (:mod:`.clients`), read the services (:mod:`.services`), scaffold the router and the
controller stubs (:mod:`.scaffold`), and tell whether generated files are current
(:mod:`.staleness`). The command (``microframe.management.commands.genproto``) only reads its
options, writes the files and reports."""

from __future__ import annotations

from microframe.codegen.naming import HEADER, SUFFIXES
from microframe.codegen.protoc import ProtoError, generate
from microframe.codegen.scaffold import controller_plan, router_text, with_unimplemented_import
from microframe.codegen.services import ServiceInfo, services_of
from microframe.codegen.staleness import same

__all__ = [
    "HEADER",
    "SUFFIXES",
    "ProtoError",
    "ServiceInfo",
    "controller_plan",
    "generate",
    "router_text",
    "same",
    "services_of",
    "with_unimplemented_import",
]
