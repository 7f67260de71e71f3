"""The ``TRACE`` level: between DEBUG and INFO, as in the seed's logger.

``DEBUG`` (10) is for the framework's own details, ``TRACE`` (15) for following a request
through a service without the noise of DEBUG. ``LOGGING`` and ``LOG["LEVEL"]`` accept the name
``"TRACE"`` once this module is imported (``microframe.setup()`` does)::

    from microframe.contrib.logging import trace

    trace(ctx.logger, "cache miss for %s", key)      # or ctx.logger.log(TRACE, ...)
"""

from __future__ import annotations

import logging
from typing import Any

TRACE = 15
logging.addLevelName(TRACE, "TRACE")


def trace(
    logger: logging.Logger | logging.LoggerAdapter[Any], msg: str, *args: Any, **kwargs: Any
) -> None:
    """Log ``msg % args`` at TRACE on ``logger`` (a logger or ``ctx.logger``)."""
    if logger.isEnabledFor(TRACE):
        logger.log(TRACE, msg, *args, **kwargs)
