"""npm packages for the tests' independent clients (grpc-js, Connect, Playwright), installed by
``npm ci`` from a committed lockfile."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

from support.env import require_binary

NPM_TIMEOUT = 300.0


def fail_or_skip(message: str) -> NoReturn:
    """Under CI a failure (CI installs what the tests need), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def node_modules(here: Path, name: str, marker: str) -> Path:
    """The ``node_modules`` of ``here``'s package.json and package-lock.json, installed by
    ``npm ci`` into a directory keyed by their hash (``microframe-<name>-npm-<hash>`` in the
    temporary directory, reused by later runs): built in a fresh directory and renamed into
    place, so that a run cut short or another run at the same time never sees half an install.
    ``marker`` is a file of the install (``@grpc/grpc-js/package.json``) that says it is done."""
    npm = require_binary("npm")
    lock = (here / "package-lock.json").read_bytes()
    key = hashlib.sha256(lock + (here / "package.json").read_bytes()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"microframe-{name}-npm-{key}"
    if (target / "node_modules" / marker).is_file():
        return target / "node_modules"
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        shutil.copy(here / "package.json", work)
        shutil.copy(here / "package-lock.json", work)
        try:
            done = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            fail_or_skip(f"npm ci did not finish within {NPM_TIMEOUT:.0f} s")
        if done.returncode != 0:
            fail_or_skip(f"npm ci failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        try:
            work.rename(target)
        except OSError:  # another run put it there first: use that one
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "node_modules"
