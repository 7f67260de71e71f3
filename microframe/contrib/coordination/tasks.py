"""The ``TASKS`` runner: periodic jobs of a service (:class:`TaskRunner`).

Each task's CALLABLE (a ``def``, run in a thread, or an ``async def``, of no arguments) runs
every ``EVERY`` seconds, the first time as soon as the task is active. A run still going when
the next one is due is not started twice: that one is skipped (counted, logged). A task is
active on every instance, or, when ``LEADER_ONLY``, only while this instance leads the election
``<SERVICE_NAME>-tasks``: the first run comes as soon as leadership is gained, and none is
started once it is revoked; an ``async`` run still going then is cancelled (a thread cannot be:
it finishes, which is why a LEADER_ONLY job that must never overlap another instance's checks
the election's fencing token where it writes).

runserver starts the runner in the process that stands for the instance (see
:mod:`~microframe.contrib.coordination.serving`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from microframe.contrib.coordination.metrics import prepare
from microframe.core.exceptions import ImproperlyConfigured

__all__ = ["Task", "TaskRunner", "load_tasks"]

logger = logging.getLogger("microframe.tasks")

#: Keys of a TASKS entry.
TASK_KEYS = frozenset({"CALLABLE", "EVERY", "LEADER_ONLY"})
#: Seconds stop() waits for the runs still going (async ones are cancelled first).
STOP_WAIT = 5.0


@dataclass(frozen=True)
class Task:
    """One entry of ``TASKS``, its callable imported."""

    name: str
    func: Callable[[], Any]
    every: float
    leader_only: bool = False

    @property
    def is_async(self) -> bool:
        call = type(self.func).__call__ if not inspect.isroutine(self.func) else None
        return inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(call)


def load_tasks(tasks: Mapping[str, Any]) -> list[Task]:
    """Return the tasks of a ``TASKS`` setting; ImproperlyConfigured for a malformed entry
    (the checks report each: ``coordination.E002``)."""
    from microframe.utils.module_loading import import_string

    if not isinstance(tasks, Mapping):
        raise ImproperlyConfigured(f"TASKS must be a dict, not {type(tasks).__name__}")
    loaded = []
    for name, entry in tasks.items():
        if not isinstance(entry, Mapping) or set(entry) - TASK_KEYS:
            raise ImproperlyConfigured(f"TASKS[{name!r}] must be a dict of {sorted(TASK_KEYS)}")
        path = entry.get("CALLABLE")
        try:
            func = import_string(path) if isinstance(path, str) else path
        except ImportError as err:
            raise ImproperlyConfigured(f"TASKS[{name!r}]: CALLABLE {path!r}: {err}") from None
        every = entry.get("EVERY")
        leader_only = entry.get("LEADER_ONLY", False)
        if not callable(func):
            raise ImproperlyConfigured(f"TASKS[{name!r}]: CALLABLE {path!r} is not callable")
        if isinstance(every, bool) or not isinstance(every, (int, float)) or every <= 0:
            raise ImproperlyConfigured(f"TASKS[{name!r}]: EVERY must be seconds > 0")
        if not isinstance(leader_only, bool):
            raise ImproperlyConfigured(f"TASKS[{name!r}]: LEADER_ONLY must be True or False")
        loaded.append(Task(str(name), func, float(every), leader_only))
    return loaded


class TaskRunner:
    """Run ``tasks`` until :meth:`stop`; the LEADER_ONLY ones while leading ``election``
    (an :class:`~microframe.contrib.coordination.election.Election`, made by :meth:`start`
    from ``election_name`` and ``identity`` when not given)."""

    def __init__(
        self,
        tasks: list[Task],
        *,
        election_name: str = "tasks",
        identity: str | None = None,
        election: Any = None,
    ) -> None:
        self.tasks = tasks
        self.election_name = election_name
        self.identity = identity
        self.election = election
        self.metrics = prepare(task.name for task in tasks)
        self._leading = asyncio.Event()
        self._schedulers: list[asyncio.Task[None]] = []
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._started = False

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def start(self) -> None:
        """Start the schedules (and the campaign, if a task is LEADER_ONLY)."""
        if self._started:
            return
        self._started = True
        self.metrics.leader.set(0)
        leader_only = [task for task in self.tasks if task.leader_only]
        if leader_only:
            try:
                if self.election is None:
                    from microframe.contrib.coordination.election import Election

                    self.election = Election(self.election_name, self.identity)
                self.election.on_elected(self._elected)
                self.election.on_revoked(self._revoked)
                self.election.start()
            except ImproperlyConfigured as err:
                logger.error("LEADER_ONLY tasks will not run (%s): %s",
                             ", ".join(t.name for t in leader_only), err)
                self.election = None
        for task in self.tasks:
            if task.leader_only and self.election is None:
                continue
            self._schedulers.append(
                asyncio.create_task(self._schedule(task), name=f"task {task.name}")
            )
        logger.info("tasks started: %s", ", ".join(
            f"{t.name} every {t.every:g} s{' (leader only)' if t.leader_only else ''}"
            for t in self.tasks
        ) or "none")

    def _elected(self) -> None:
        self._leading.set()
        self.metrics.leader.set(1)
        logger.info("leading %s: LEADER_ONLY tasks run on this instance (%s)",
                    self.election_name, self.identity or "")

    def _revoked(self) -> None:
        self._leading.clear()
        self.metrics.leader.set(0)
        logger.info("no longer leading %s: LEADER_ONLY tasks stop here", self.election_name)
        for task in self.tasks:
            run = self._runs.get(task.name)
            if task.leader_only and run is not None and not run.done() and task.is_async:
                run.cancel()

    async def _schedule(self, task: Task) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if task.leader_only and not self._leading.is_set():
                await self._leading.wait()
                due = loop.time()
            running = self._runs.get(task.name)
            if running is not None and not running.done():
                self.metrics.runs.labels(task.name, "skipped").inc()
                logger.warning("task %s: still running when due again; this run is skipped",
                               task.name)
            else:
                self._runs[task.name] = asyncio.create_task(
                    self._run(task), name=f"task {task.name} run"
                )
            due += task.every
            now = loop.time()
            if due < now:  # fell behind: no burst of runs to catch up
                due += (now - due) // task.every * task.every
            await asyncio.sleep(max(0.0, due - now))

    async def _run(self, task: Task) -> None:
        started = time.perf_counter()
        outcome = "error"
        try:
            if task.is_async:
                await task.func()
            else:
                await asyncio.to_thread(task.func)
            outcome = "ok"
        except asyncio.CancelledError:
            logger.warning("task %s: run cancelled (%s)", task.name,
                           "leadership lost" if task.leader_only and not self.is_leader
                           else "stopping")
            raise
        except Exception:
            logger.exception("task %s failed", task.name)
        finally:
            self.metrics.runs.labels(task.name, outcome).inc()
            self.metrics.duration.labels(task.name).observe(time.perf_counter() - started)

    async def stop(self) -> None:
        """Stop scheduling, resign leadership, cancel the async runs and wait (at most
        :data:`STOP_WAIT` seconds) for the runs still going."""
        schedulers, self._schedulers = self._schedulers, []
        for scheduler in schedulers:
            scheduler.cancel()
        if schedulers:
            await asyncio.wait(schedulers)
        runs = [run for run in self._runs.values() if not run.done()]
        for task in self.tasks:
            run = self._runs.get(task.name)
            if run is not None and task.is_async:
                run.cancel()
        if self.election is not None:
            await self.election.resign()
        if runs:
            done, pending = await asyncio.wait(runs, timeout=STOP_WAIT)
            if pending:
                logger.warning("stopping: %d task run(s) still going after %.0f s",
                               len(pending), STOP_WAIT)
        self._leading.clear()
        self.metrics.leader.set(0)
