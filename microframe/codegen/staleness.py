"""Whether a generated file is current: its content, but for the version stamps of the
compilers that wrote it."""

from __future__ import annotations

import re
from pathlib import Path

_VERSION_STAMPS = re.compile(
    r"^# Protobuf Python Version: [\w.]+$"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)"
    r"|^GRPC_GENERATED_VERSION = '[^']*'$",
    re.M,
)


def _unstamped(text: str) -> str:
    """``text`` without the versions of the protoc and grpcio-tools that wrote it."""
    return _VERSION_STAMPS.sub("<version>", text)


def same(path: Path, text: str, *, ignore_versions: bool = False) -> bool:
    """Whether ``path`` holds ``text`` (``ignore_versions``: but for the compilers' version
    stamps, so that ``--check`` agrees across grpcio-tools releases that generate the same code)."""
    try:
        current = path.read_text(encoding="utf-8")
    except OSError:
        return False
    if ignore_versions:
        return _unstamped(current) == _unstamped(text)
    return current == text
