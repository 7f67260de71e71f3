"""A blocking facade for scripts and sync code (a Django view, a CLI, a thread pool).

::

    from microframe.client.blocking import blocking
    from example.generate.hello_client import GreeterClient

    greeter = blocking(GreeterClient("hello"))
    reply = greeter.SayHello(HelloRequest(name="Ada"))          # returns the reply
    for reply in greeter.LotsOfReplies(HelloRequest(name="x")): # a plain iterator
        ...

The calls run on one event loop in a background thread shared by every blocking client of
the process (its discovery cache, channels and breakers with it), so any number of threads can
call at once; each waits for its own answer.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The event loop of the blocking clients, started on first use (a daemon thread)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="microframe-client-loop", daemon=True).start()
            ready.wait(10)
            _loop = loop
    return _loop


def shutdown(timeout: float = 10.0) -> None:
    """Close the background loop's channels and stop it (at exit, or between tests).

    The next blocking call starts a new loop.
    """
    global _loop
    with _lock:
        loop, _loop = _loop, None
    if loop is None or loop.is_closed():
        return

    async def close_channels() -> None:
        from microframe.client.channels import get_channel_pool

        await get_channel_pool().close()

    try:
        asyncio.run_coroutine_threadsafe(close_channels(), loop).result(timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)


def iterate(stream: Any, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """The async iterator ``stream`` as a plain iterator, each step run on ``loop``."""

    async def step() -> Any:
        return await stream.__anext__()

    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(step(), loop).result()
        except StopAsyncIteration:
            return


class Blocking:
    """Wraps a :class:`~microframe.client.Client` or a typed client; its coroutine methods
    become blocking calls, its streaming methods plain iterators."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._loop = background_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        loop = self._loop

        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(attr):
                return asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), loop).result()
            result = attr(*args, **kwargs)
            if hasattr(result, "__anext__"):
                return iterate(result, loop)
            return result

        return call


def blocking(client: Any) -> Any:
    """Return the blocking facade of ``client``."""
    return Blocking(client)
