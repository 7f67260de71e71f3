"""Compile the service's ``idl/**/*.proto`` into what ``generate/`` holds.

Runs protoc from ``grpcio-tools`` (``python -m grpc_tools.protoc``: no system protoc needed) on
every ``.proto`` under the idl directory, with the well-known types (``google/protobuf/*.proto``)
googleapis' ``google/api/*.proto`` (``google.api.http`` annotations, from
googleapis-common-protos) and protovalidate's ``buf/validate/validate.proto`` (validation
rules, shipped with microframe) on the include path, and writes ``*_pb2.py``, ``*_pb2.pyi`` (for
editors and mypy) and ``*_pb2_grpc.py`` under the generate directory, mirroring the idl tree:

- protoc's flat imports (``import hello_pb2``, ``from shop import item_pb2``) become package
  imports (``from . import hello_pb2``, ``from .shop import item_pb2``), so ``generate`` works
  as a package wherever the service is installed; imports of ``google.*`` (the well-known
  types, ``google.api``) stay as they are;
- every file starts with a DO NOT EDIT header naming its source;
- a second run changes nothing (files are rewritten only when their content differs);
- a proto that does not compile is reported with its ``file:line:column`` and nothing is
  written: the compiler writes into a temporary directory first;
- ``--check`` writes nothing and exits non-zero when ``generate/`` is stale (a file missing, out
  of date, or left over from a proto that is gone), for CI; the version stamps protoc and
  grpcio-tools write into the code are not compared, so a CI or image build with another
  grpcio-tools release agrees with the developer's tree when the code itself is the same.

From the same protos: a typed client module per proto (``<proto>_client.py``, see
:mod:`microframe.codegen.clients`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from microframe.codegen.clients import typed_clients
from microframe.codegen.naming import DESCRIPTORS, HEADER, SUFFIXES, relative_import
from microframe.codegen.services import ServiceInfo, services_of
from microframe.core.checks.proto_checks import FINGERPRINT_NAME, protos_fingerprint


class ProtoError(Exception):
    """The protos cannot be compiled (the message says where), or there are none."""


#: Top-level packages of the protos found on the include path outside ``idl/``.
EXTERNAL_PACKAGES = frozenset({"google", "buf"})

_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)
_FROM_IMPORT = re.compile(r"^from (\w[\w.]*) import (\w+_pb2) as (\w+)$", re.M)


def well_known_include() -> str:
    """The directory of the well-known ``google/protobuf/*.proto`` shipped with grpcio-tools."""
    import grpc_tools

    return str(Path(grpc_tools.__file__).resolve().parent / "_proto")


def googleapis_include() -> str | None:
    """The directory holding ``google/api/*.proto`` (``google.api.http`` annotations...) of
    googleapis-common-protos, when it is installed."""
    try:
        import google.api.annotations_pb2 as annotations
    except ImportError:
        return None
    root = Path(annotations.__file__).resolve().parent.parent.parent
    return str(root) if (root / "google" / "api" / "annotations.proto").is_file() else None


def validate_include() -> str:
    """The directory holding ``buf/validate/validate.proto`` (protovalidate's rules), shipped
    with microframe beside the module generated from it (``buf.validate.validate_pb2``, which
    protovalidate 1.x imports and no package on PyPI provides)."""
    import buf.validate.validate_pb2 as rules

    return str(Path(rules.__file__).resolve().parent.parent.parent)


def fix_imports(text: str, module_dir: Path) -> str:
    """protoc's absolute imports of sibling modules (in ``.py`` and ``.pyi`` alike), made
    relative to the generate package."""

    def plain(match: re.Match[str]) -> str:
        return f"from {relative_import('', module_dir)} import {match.group(1)} as {match.group(2)}"

    def dotted(match: re.Match[str]) -> str:
        package, module, alias = match.groups()
        if package.split(".")[0] in EXTERNAL_PACKAGES:
            # The well-known types, googleapis' google.api, google.rpc..., protovalidate's
            # buf.validate: modules of installed packages, not of the generate package.
            return match.group(0)
        return f"from {relative_import(package, module_dir)} import {module} as {alias}"

    return _FROM_IMPORT.sub(dotted, _IMPORT.sub(plain, text))


def protos_of(idl: Path) -> list[Path]:
    """The ``.proto`` files under ``idl`` (relative, sorted); ProtoError when there are none."""
    protos = sorted(p.relative_to(idl) for p in idl.rglob("*.proto"))
    if not protos:
        raise ProtoError(f"No .proto file under {idl}.")
    return protos


def run_protoc(idl: Path, protos: list[Path], *outputs: str) -> None:
    """Run protoc on ``protos`` of ``idl`` with the include path of every compile and the
    ``outputs`` options; ProtoError, with each error's location under ``idl``, when it fails."""
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{idl}", f"-I{well_known_include()}",
        *([f"-I{extra}"] if (extra := googleapis_include()) else []),
        f"-I{validate_include()}",
        *outputs,
        *[str(p) for p in protos],
    ]
    result = subprocess.run(command, cwd=idl, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        located = [
            f"  {idl / line}" if re.match(r"^[\w./-]+\.proto:\d+:\d+:", line) else f"  {line}"
            for line in errors
        ]
        raise ProtoError("The protos do not compile (nothing was written):\n" + "\n".join(located))


def compile_protos(idl: Path, out_tmp: Path) -> list[Path]:
    """Run protoc on every proto of ``idl`` into ``out_tmp`` (and the descriptors of them all,
    imports included, into ``out_tmp/descriptors.pb``); return the protos (relative)."""
    protos = protos_of(idl)
    run_protoc(
        idl, protos,
        f"--python_out={out_tmp}", f"--pyi_out={out_tmp}", f"--grpc_python_out={out_tmp}",
        f"--descriptor_set_out={out_tmp / DESCRIPTORS}", "--include_imports",
    )
    return protos


def generate(idl: Path) -> tuple[dict[Path, str], list[ServiceInfo]]:
    """What ``generate/`` should hold (relative path -> content), and the services declared."""
    with tempfile.TemporaryDirectory(prefix="microframe-genproto-") as tmp:
        out = Path(tmp)
        protos = compile_protos(idl, out)
        files: dict[Path, str] = {}
        for proto in protos:
            stem = proto.with_suffix("")
            for suffix in SUFFIXES:
                path = stem.parent / f"{stem.name}{suffix}"
                produced = out / path
                if not produced.exists():
                    continue
                text = produced.read_text(encoding="utf-8")
                text = fix_imports(text, path.parent)
                files[path] = HEADER.format(source=f"idl/{proto.as_posix()}") + text
        files.update(typed_clients(out / DESCRIPTORS, protos))
        services = services_of(out / DESCRIPTORS, protos)
        # The package records which protos it was made from (the freshness check reads it).
        files[Path("__init__.py")] = (
            HEADER.format(source="the protos of idl/")
            + '"""Code generated from the service\'s protos: messages, stubs and '
            + 'typed clients."""\n\n'
            + f'{FINGERPRINT_NAME} = "{protos_fingerprint(idl)}"\n'
        )
        # Every directory of generated modules is a package.
        for directory in {Path(".")} | {p.parent for p in files}:
            for part in [directory, *directory.parents]:
                init = part / "__init__.py"
                if init not in files:
                    files[init] = ""
        return files, services
