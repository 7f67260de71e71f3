"""When a serving process follows the configuration center: the battery's signal receivers.

Every process runserver starts that serves calls (``process.role`` ``"server"`` or
``"worker"``) runs a :class:`~microframe.contrib.config.reload.Reloader` from the moment it
serves (``server_started``) until it stops (``server_stopping``): each worker of
``--workers N`` applies every change itself. Nothing is followed without
``CONFIG["BACKEND"]``, nor for a server a program or a test starts without a process.
"""

from __future__ import annotations

import weakref
from typing import Any

from microframe.contrib.config.backend import config_options
from microframe.core.signals import server_started, server_stopping

__all__ = ["connect", "follow"]

_reloaders: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def follow(server: Any) -> Any:
    """Start following the configuration center for ``server``; return the reloader."""
    from microframe.contrib.config.reload import Reloader

    reloader = _reloaders.get(server)
    if reloader is None:
        reloader = _reloaders[server] = Reloader()
        reloader.start()
    return reloader


async def start_following(sender: Any, *, server: Any, **kwargs: Any) -> None:
    process = server.process
    if process is None or process.role not in ("server", "worker"):
        return
    if not config_options().get("BACKEND"):
        return
    follow(server)


async def stop_following(sender: Any, *, server: Any, **kwargs: Any) -> None:
    reloader = _reloaders.pop(server, None)
    if reloader is not None:
        await reloader.stop()


def connect() -> None:
    """Connect the receivers (the config battery's ``ready()``)."""
    server_started.connect(start_following)
    server_stopping.connect(stop_following)
