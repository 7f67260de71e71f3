"""Check that the generated code was made from the protos as they are now.

- ``microframe.W005``: ``idl/`` has protos, and ``generate/`` is missing or was generated from
  other versions of them.

``genproto`` writes the fingerprint of the protos it compiled (:func:`protos_fingerprint`, a
SHA-256 of every ``idl/**/*.proto``'s path and content) into ``generate/__init__.py``; the check
hashes the protos again and compares, which takes a millisecond, not a compiler run, so it can
run before every ``runserver``. ``genproto --check`` (in CI) compares every generated file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from microframe.conf import settings
from microframe.core.checks.messages import CheckMessage, Warning
from microframe.core.checks.registry import Tags, register

FINGERPRINT_NAME = "PROTOS_SHA256"
_FINGERPRINT = re.compile(rf'^{FINGERPRINT_NAME} = "([0-9a-f]{{64}})"$', re.M)
HINT = (
    "Run `python manage.py genproto` to regenerate generate/, app/router.py and the controller "
    "stubs."
)


def protos_fingerprint(idl: Path) -> str:
    """SHA-256 of the path and content of every ``.proto`` under ``idl``, in path order."""
    digest = hashlib.sha256()
    for path in sorted(idl.rglob("*.proto")):
        digest.update(path.relative_to(idl).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def recorded_fingerprint(generate: Path) -> str | None:
    """The fingerprint ``genproto`` wrote into ``generate/__init__.py``, if any."""
    try:
        match = _FINGERPRINT.search((generate / "__init__.py").read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


@register(Tags.router)
def check_generated_code(**kwargs: Any) -> list[CheckMessage]:
    root = Path(getattr(settings, "SERVICE_ROOT", "") or ".")
    idl, generate = root / "idl", root / "generate"
    if not idl.is_dir() or not any(idl.rglob("*.proto")):
        return []
    if not (generate / "__init__.py").is_file():
        return [Warning(
            f"{idl} has protos but {generate} has no generated code.",
            hint=HINT,
            id="microframe.W005",
        )]
    recorded = recorded_fingerprint(generate)
    if recorded != protos_fingerprint(idl):
        if recorded:
            what = "were changed since genproto last ran"
        else:
            what = "have no genproto fingerprint"
        return [Warning(
            f"The protos of {idl} {what}: {generate} may be stale.", hint=HINT, id="microframe.W005"
        )]
    return []
