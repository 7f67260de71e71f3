"""What middleware needs to follow the messages of a streaming call.

The end of a call, and the status code it was answered with, is the method handler's to tell
(:meth:`microframe.core.context.RequestContext.on_end`); the messages of a stream go past a
middleware as it is iterated: :class:`CountedMessages` calls back for each one (metrics and the
access log count them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any


class CountedMessages:
    """A stream of messages (requests or replies) calling ``on_message`` for each message.

    A class rather than an async generator: its ``__anext__`` is a plain coroutine, cheaper
    per message, and closing it closes the stream it wraps at once.
    """

    __slots__ = ("_stream", "_on_message")

    def __init__(self, stream: Any, on_message: Callable[[Any], Any]) -> None:
        self._stream: AsyncIterator[Any] = stream.__aiter__()
        self._on_message = on_message

    def __aiter__(self) -> CountedMessages:
        return self

    async def __anext__(self) -> Any:
        message = await self._stream.__anext__()
        self._on_message(message)
        return message

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()
