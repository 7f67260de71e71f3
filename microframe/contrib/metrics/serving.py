"""runserver's /metrics endpoint: the metrics battery's signal receivers.

- ``serving_starting``: a process serving alone, or the supervisor of ``--workers N``, serves
  ``GET /metrics`` on ``METRICS["HOST"]`` and the process's metrics port (``--metrics-port`` or
  ``METRICS["PORT"]``) when ``METRICS["ENABLED"]``. A pool's workers write their metrics to a
  directory of their own (``PROMETHEUS_MULTIPROC_DIR``, set here, before the supervisor starts
  them) that the supervisor's endpoint aggregates; a worker serves no endpoint.
- ``worker_exited``: the live gauges of a worker that exited are dropped.
- ``serving_stopped``: the endpoint is closed and the directory removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Any

from microframe.contrib.metrics.exposition import (
    MetricsServer,
    mark_process_dead,
    start_http_server,
)
from microframe.core.serving import AddressInUse, ServingProcess
from microframe.core.signals import serving_starting, serving_stopped, worker_exited

__all__ = ["connect"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: What each process serves: its endpoint and, for a supervisor, the workers' directory.
_endpoints: dict[int, tuple[ServingProcess, MetricsServer, str | None]] = {}


def start_endpoint(sender: Any, *, process: ServingProcess, **kwargs: Any) -> None:
    """Serve /metrics for ``process``; raise AddressInUse (or OSError) when it cannot bind."""
    from microframe.conf import settings

    if not settings.METRICS["ENABLED"] or process.role == "worker":
        return
    host, port = settings.METRICS["HOST"], process.metrics_port
    directory = None
    if process.role == "supervisor":
        directory = tempfile.mkdtemp(prefix="microframe-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    try:
        endpoint = start_http_server(
            host, port, labels=settings.METRICS.get("LABELS") or {}, multiprocess_dir=directory
        )
    except OSError as err:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        if err.errno == errno.EADDRINUSE:
            raise AddressInUse(host, port, "metrics") from err
        raise OSError(f"Cannot serve metrics on {host}:{port}: {err}") from err
    _endpoints[id(process)] = (process, endpoint, directory)
    process.endpoints.append(f"metrics on http://{endpoint.host}:{endpoint.port}/metrics")


def forget_worker(sender: Any, *, pool: Any, pid: int, **kwargs: Any) -> None:
    """Drop the live gauges of the worker ``pid`` that exited."""
    served = _endpoints.get(id(pool.process)) if pool.process is not None else None
    if served is not None and served[2] is not None:
        mark_process_dead(pid, served[2])


def stop_endpoint(sender: Any, *, process: ServingProcess, **kwargs: Any) -> None:
    """Close the endpoint of ``process`` and remove the workers' directory."""
    served = _endpoints.pop(id(process), None)
    if served is None:
        return
    _, endpoint, directory = served
    endpoint.close()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def connect() -> None:
    """Connect the receivers (the metrics battery's ``ready()``)."""
    serving_starting.connect(start_endpoint)
    worker_exited.connect(forget_worker)
    serving_stopped.connect(stop_endpoint)
