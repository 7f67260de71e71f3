"""The limiter battery: rate limits on the calls a service serves and the calls it makes.

- :mod:`.backends`: ``TokenBucket``, ``LeakyBucket``, ``FixedWindowCounter``, ``SlidingWindow``;
- :mod:`.redis`: ``RedisLimiter``, one limit shared by every process of a service;
- :mod:`.middleware`: ``RateLimitMiddleware`` (``LIMITER``) and the client chain's
  ``ClientRateLimitMiddleware`` (``limit_qps``);
- :mod:`.settings`: ``LIMITER`` resolved per method; :mod:`.metrics`; :mod:`.checks`.
"""

from microframe.contrib.limiter.backends import (
    FixedWindowCounter,
    LeakyBucket,
    Limiter,
    SlidingWindow,
    TokenBucket,
)

__all__ = ["FixedWindowCounter", "LeakyBucket", "Limiter", "SlidingWindow", "TokenBucket"]
