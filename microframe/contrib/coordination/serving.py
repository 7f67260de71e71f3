"""Where runserver runs the TASKS: the coordination battery's signal receivers.

The tasks run once per instance, in the process that stands for it:

- one process serving alone (``process.role == "server"``): from ``server_started`` until
  ``server_stopping``;
- ``--workers N``: in the supervisor, from ``pool_started`` until ``pool_stopping``; the
  workers run none.

Nothing runs for a server a program or a test starts itself (``server.process`` is None), nor
when ``TASKS`` is empty. The election of the LEADER_ONLY tasks is ``<SERVICE_NAME>-tasks``; the
instance's value in it is ``"<host:port> pid <pid>"``.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.signals import pool_started, pool_stopping, server_started, server_stopping
from microframe.discovery.instance import format_address

__all__ = ["connect"]

logger = logging.getLogger("microframe.tasks")

_runners: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


async def _start(owner: Any, address: str) -> None:
    from microframe.conf import settings

    tasks = getattr(settings, "TASKS", None)
    if not tasks:
        return
    from microframe.contrib.coordination.tasks import TaskRunner, load_tasks

    try:
        loaded = load_tasks(tasks)
    except ImproperlyConfigured as err:
        logger.error("TASKS not started: %s", err)
        return
    runner = TaskRunner(
        loaded,
        election_name=f"{settings.SERVICE_NAME}-tasks",
        identity=f"{address} pid {os.getpid()}",
    )
    _runners[owner] = runner
    await runner.start()


async def start_server_tasks(sender: Any, *, server: Any, **kwargs: Any) -> None:
    """Run the TASKS in a server that runserver runs alone."""
    process = server.process
    if process is None or process.role != "server":
        return
    await _start(server, format_address(server.config.host, server.port))


async def start_pool_tasks(sender: Any, *, pool: Any, **kwargs: Any) -> None:
    """Run the TASKS in the supervisor of ``runserver --workers N``."""
    process = pool.process
    if process is None:
        return
    await _start(pool, process.address)


async def stop_tasks(sender: Any, *, server: Any = None, pool: Any = None, **kwargs: Any) -> None:
    """Stop the TASKS of the server or the pool stopping, if they run."""
    runner = _runners.pop(server if pool is None else pool, None)
    if runner is not None:
        await runner.stop()
        from microframe.contrib.coordination.connection import close

        await close()


def connect() -> None:
    """Connect the receivers (the coordination battery's ``ready()``)."""
    server_started.connect(start_server_tasks)
    server_stopping.connect(stop_tasks)
    pool_started.connect(start_pool_tasks)
    pool_stopping.connect(stop_tasks)
