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
from collections.abc import Sequence

from microframe.core.serving import ServingProcess
from microframe.core.signals import pool_started, pool_stopped, pool_stopping, worker_exited
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
    """Start ``count`` copies of ``command`` and supervise them until a signal arrives.

    It sends the pool's signals (:mod:`microframe.core.signals`) with itself as ``pool``:
    ``pool_started`` once the workers are started (a task, cancelled if the pool stops first),
    ``worker_exited`` for each worker that exits, ``pool_stopping`` before the workers are told
    to drain (awaited, up to the grace period: deregistration comes first, while every worker
    still serves), ``pool_stopped`` once they all have exited. ``process`` is runserver's
    description of the supervisor's process (None when a program runs a pool itself).
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        grace: float = 10.0,
        env: dict[str, str] | None = None,
        process: ServingProcess | None = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.process = process
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = asyncio.Event()

    async def _keep_running(self, worker_id: int) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            env = dict(
                self.env,
                **{
                    WORKER_ID_ENV: str(worker_id),
                    WORKERS_ENV: str(self.count),
                    PARENT_PID_ENV: str(os.getpid()),
                },
            )
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.command, env=env)
            self.processes[worker_id] = proc
            logger.info("worker %d started (pid %d)", worker_id, proc.pid)
            code = await proc.wait()
            await worker_exited.asend(self.__class__, pool=self, pid=proc.pid)
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
        started = asyncio.create_task(pool_started.asend(self.__class__, pool=self))
        await self._stopping.wait()
        if not started.done():
            started.cancel()
        try:
            await with_timeout(pool_stopping.asend(self.__class__, pool=self), self.grace + 5)
        except TimeoutError:
            logger.error("stopping: the pool_stopping receivers took over %.1f s", self.grace + 5)
        logger.info("stopping %d workers", len(self.processes))
        self._signal_workers(signal.SIGTERM)
        try:
            await with_timeout(asyncio.gather(*tasks), self.grace + 5)
        except TimeoutError:
            logger.error("workers still running after %.1f s: killing them", self.grace + 5)
            self._signal_workers(signal.SIGKILL)
            await asyncio.gather(*tasks, return_exceptions=True)
        await pool_stopped.asend(self.__class__, pool=self)
        return 0
