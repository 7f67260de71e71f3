"""The repository's paths and the environment the tests give the processes they start.

A test starts services, commands and tools as a user does (``manage.py``, ``python -m
microframe``, ``ruff``); these functions give them this checkout and the test service on their
path, the session's own file registry, and the settings a test writes for them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]


def require_binary(name: str) -> str:
    """Return the path of ``name``; fail under CI when it is missing, skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def require_native() -> None:
    """Fail under CI when the native transport (the ``native`` extra) is missing; skip
    elsewhere."""
    import importlib.util

    if importlib.util.find_spec("pygrpc_native") is None:
        if os.environ.get("CI"):
            pytest.fail("pygrpc-native is required under CI (the dev extra installs it)")
        pytest.skip("pygrpc-native is not installed (the native extra)")


def ruff_check(cwd: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    """``ruff check`` with this project's configuration (pyproject.toml), as a service sees it:
    microframe is an installed dependency there (third-party for isort), not first-party as in
    this repository."""
    import importlib.util

    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is required under CI (the dev extra installs it)")
        pytest.skip("ruff is not installed")
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache",
         "--config", str(ROOT / "pyproject.toml"), "--config", "lint.isort.known-first-party = []",
         *paths],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


_SESSION_REGISTRY_DIR = tempfile.mkdtemp(prefix="microframe-test-registry-")


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: this checkout and ``tests/`` (the test
    service) on its path, no settings module or environment inherited from the caller, and the
    session's own file registry; ``extra`` overrides any of it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("MICROFRAME_SETTINGS_MODULE", None)
    env.pop("MICROFRAME_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Servers started by tests register in the session's own file registry.
    env.setdefault("MICROFRAME_REGISTRY_DIR", _SESSION_REGISTRY_DIR)
    env.update(extra)
    return env


def service_settings(
    tmp_path: Path,
    module: str,
    service: str,
    registry: dict[str, object],
    grpc: dict[str, object] | None = None,
    **extra: object,
) -> str:
    """Write a settings package ``module`` in ``tmp_path`` for a test service named ``service``
    (the test service's settings, with ``registry`` as REGISTRY, ``grpc`` over GRPC and every
    ``extra`` setting); return its dotted path. ``tmp_path`` must be on the server's PYTHONPATH."""
    package = tmp_path / module
    package.mkdir()
    (package / "__init__.py").write_text("")
    lines = [
        "from testservice.settings import *",
        f"SERVICE_NAME = {service!r}",
        f"REGISTRY = {registry!r}",
    ]
    if grpc:
        lines.append(f"GRPC = {{**GRPC, **{grpc!r}}}")
    lines += [f"{name} = {value!r}" for name, value in extra.items()]
    (package / "settings.py").write_text("\n".join(lines) + "\n")
    return f"{module}.settings"
