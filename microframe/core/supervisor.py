"""Run N worker processes sharing one port (SO_REUSEPORT) and keep them running.

Workers are fresh interpreter processes started with the same command line (grpc's core does
not survive ``fork``). A worker that exits without being asked is restarted, with a backoff
when it keeps crashing. SIGTERM/SIGINT is passed on to every worker, which drains its calls;
the supervisor waits for them up to the grace period (plus a margin), then kills what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.server")

WORKER_ID_ENV = "MICROFRAME_WORKER_ID"
WORKERS_ENV = "MICROFRAME_WORKERS"
PARENT_PID_ENV = "MICROFRAME_PARENT_PID"

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux).

    Workers and the reloader's child call it, so that a supervisor killed with SIGKILL (which
    it cannot pass on) does not leave workers holding the port: they get SIGTERM and drain.
    ``prctl(PR_SET_PDEATHSIG)`` through ctypes: the standard library has no binding for it and
    the call is one line. When the parent is already gone (it died before the call), the signal
    is sent at once. Elsewhere than Linux this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return
    except (OSError, AttributeError) as err:
        logger.warning("cannot ask to be stopped with the parent process: %s", err)
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


class Supervisor:
    """Start ``count`` copies of ``command`` and supervise them until a signal arrives."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        grace: float = 10.0,
        env: dict[str, str] | None = None,
        on_worker_exit: Callable[[int], None] | None = None,
        after_start: Callable[[], Coroutine[Any, Any, None]] | None = None,
        before_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.on_worker_exit = on_worker_exit
        self.after_start = after_start
        self.before_stop = before_stop
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = asyncio.Event()

    async def _keep_running(self, worker_id: int) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            env = dict(
                self.env,
                **{WORKER_ID_ENV: str(worker_id), WORKERS_ENV: str(self.count), PARENT_PID_ENV: str(os.getpid())},
            )
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.command, env=env)
            self.processes[worker_id] = proc
            logger.info("worker %d started (pid %d)", worker_id, proc.pid)
            code = await proc.wait()
            if self.on_worker_exit is not None:
                self.on_worker_exit(proc.pid)
            if self._stopping.is_set():
                logger.info("worker %d (pid %d) stopped with code %s", worker_id, proc.pid, code)
                return
            self.restarts += 1
            if time.monotonic() - started > 10:
                backoff = 0.5
            logger.warning(
                "worker %d (pid %d) exited with code %s; restarting in %.1f s",
                worker_id, proc.pid, code, backoff,
            )
            try:
                await with_timeout(self._stopping.wait(), backoff)
                return
            except TimeoutError:
                backoff = min(backoff * 2, 10.0)

    def _signal_workers(self, sig: int) -> None:
        for proc in self.processes.values():
            if proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT; return 0 once all of them have stopped."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        tasks = [asyncio.create_task(self._keep_running(i)) for i in range(self.count)]
        hook: asyncio.Task[None] | None = None
        if self.after_start is not None:
            hook = asyncio.create_task(self.after_start())
        await self._stopping.wait()
        if hook is not None and not hook.done():
            hook.cancel()
        if self.before_stop is not None:
            # Deregistration and the like come first, while every worker still serves.
            try:
                await with_timeout(self.before_stop(), self.grace + 5)
            except Exception:
                logger.exception("stopping: the supervisor's before_stop hook failed")
        logger.info("stopping %d workers", len(self.processes))
        self._signal_workers(signal.SIGTERM)
        try:
            await with_timeout(asyncio.gather(*tasks), self.grace + 5)
        except TimeoutError:
            logger.error("workers still running after %.1f s: killing them", self.grace + 5)
            self._signal_workers(signal.SIGKILL)
            await asyncio.gather(*tasks, return_exceptions=True)
        return 0
