"""Metrics of the TASKS runner (prometheus_client default registry, created on first use).

- ``microframe_task_runs_total{task,outcome}``: runs of each task by outcome: ``ok``,
  ``error`` (it raised, or was cancelled because leadership was lost or runserver stopped), or
  ``skipped`` (due while the previous run was still going);
- ``microframe_task_duration_seconds{task}``: how long the runs took (histogram);
- ``microframe_task_leader``: 1 while this instance leads the election of its LEADER_ONLY
  tasks, 0 otherwise.

Under ``runserver --workers N`` the tasks run in the supervisor, whose /metrics endpoint
exports what the processes write to the pool's multiprocess directory (plus its own
``process_*`` metrics), not its in-memory registry; and the supervisor imported
prometheus_client before that directory existed, so its metrics are in memory. These are made
to write to the directory instead (:func:`_multiprocess_values`), as a worker's would. The
gauge's multiprocess mode is ``max``: the supervisor is the one process that sets it, and a
process of the pool that made it too (left at 0) must not hide its 1, as ``min`` would; the
``all`` modes would add a ``pid`` label that a single process's gauge does not have.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, values

from microframe.utils.once import once

__all__ = ["OUTCOMES", "TaskMetrics", "prepare", "task_metrics"]

OUTCOMES = ("ok", "error", "skipped")
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class TaskMetrics(NamedTuple):
    runs: Counter
    duration: Histogram
    leader: Gauge


_swap_lock = threading.Lock()
_file_values: Any = None


@contextlib.contextmanager
def _multiprocess_values() -> Iterator[None]:
    """Make the metric values created meanwhile write to ``PROMETHEUS_MULTIPROC_DIR`` when it is
    set but prometheus_client was imported before it was (runserver's supervisor)."""
    global _file_values
    if not os.environ.get(MULTIPROC_ENV) or values.ValueClass is not values.MutexValue:
        yield
        return
    with _swap_lock:
        if _file_values is None:
            _file_values = values.MultiProcessValue()
        values.ValueClass = _file_values
        try:
            yield
        finally:
            values.ValueClass = values.MutexValue


@once
def task_metrics() -> TaskMetrics:
    """Return the task metrics, creating them on the first call."""
    with _multiprocess_values():
        return TaskMetrics(
            runs=Counter("microframe_task_runs", "Runs of the TASKS, by outcome.",
                         ("task", "outcome"), registry=REGISTRY),
            duration=Histogram("microframe_task_duration_seconds",
                               "Seconds the runs of the TASKS took.", ("task",),
                               buckets=BUCKETS, registry=REGISTRY),
            leader=Gauge("microframe_task_leader",
                         "1 while this instance leads the election of its LEADER_ONLY tasks.",
                         registry=REGISTRY, multiprocess_mode="max"),
        )


def prepare(tasks: Iterable[str]) -> TaskMetrics:
    """Return the metrics with the samples of ``tasks`` made (at 0), so that they are exported
    before a first run, and, in a supervisor, written to the multiprocess directory."""
    metrics = task_metrics()
    with _multiprocess_values():
        for name in tasks:
            for outcome in OUTCOMES:
                metrics.runs.labels(name, outcome)
            metrics.duration.labels(name)
    return metrics
