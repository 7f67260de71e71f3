"""TASKS of the test service the coordination tests run (files named by environment variables)."""

from __future__ import annotations

import asyncio
import os
import time


def _append(variable: str, line: str) -> None:
    with open(os.environ[variable], "a") as f:
        f.write(line + "\n")


async def leader_job() -> None:
    """Write "<pid> start <t>" and "<pid> end <t>" around a short run (monotonic clock, which
    every process of the machine shares)."""
    _append("COORD_LEADER_LOG", f"{os.getpid()} start {time.monotonic()}")
    await asyncio.sleep(0.2)
    _append("COORD_LEADER_LOG", f"{os.getpid()} end {time.monotonic()}")


def every_job() -> None:
    _append("COORD_EVERY_LOG", str(os.getpid()))


def failing_job() -> None:
    raise RuntimeError("this task fails on purpose")
