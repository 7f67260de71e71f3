"""Real etcd for the coordination tests, and the processes that lock and campaign on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.env import ROOT, TESTS, base_env

if not os.environ.get("CI"):  # under CI a missing etcd extra fails the import below
    pytest.importorskip("aetcd")

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "contender.py"


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a contender: this worktree's microframe first on the path."""
    return base_env(PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), **extra)


@pytest.fixture
def contenders(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``contender.py`` processes; every one is killed at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *map(str, args)], env=process_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / f"contender-{len(started)}.err", "w"),
            text=True, cwd=tmp_path,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
