"""``RedisLimiter``: one token bucket shared by every process and host of a service.

The bucket lives in Redis, in a hash (``tokens``, ``ts``) under ``<prefix>:<key>``, and a Lua
script takes the permits: Redis runs a script atomically, so two processes can never both take
the last token, and the script reads Redis's own clock (``TIME``), so hosts whose clocks
disagree still share one rate. This is go-zero's ``tokenlimit`` design; it is a 20-line script
rather than a library because the Python ones (``limits``) offer fixed and sliding windows on
Redis, not a token bucket with a retry-after.

When Redis cannot be reached (refused, timed out, an error), the call is decided by a local
``TokenBucket`` with the same rate and burst, so a Redis outage never stops the service: each
process then enforces the whole limit on its own (the service as a whole may admit up to
``processes * rate``). The fallback is logged once when it starts and once when Redis is back,
counted in ``microframe_limiter_redis_fallbacks_total``, and shown by the gauge
``microframe_limiter_redis_up``. While Redis is down, it is tried again every
``retry_interval`` seconds, not on every call: a call never waits for a dead Redis longer than
one ``timeout``.

The connection belongs to the event loop it is made on (``redis.asyncio``); a process serving on
one loop has one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from microframe.conf.redaction import redact
from microframe.contrib.limiter.backends import TokenBucket, _positive
from microframe.contrib.limiter.metrics import limiter_metrics
from microframe.utils.loops import PerLoop
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.limiter")

#: KEYS[1]: the bucket; ARGV: rate, burst, count, max_wait. Returns {wait_us, taken}: taken is 1
#: when the permits were taken (now, or reserved ``wait_us`` ahead), else 0 with ``wait_us``
#: the time until they could be.
TOKEN_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
local taken = 1
if tokens < count then
  wait = (count - tokens) / rate
  if wait > max_wait then
    taken = 0
  end
end
if taken == 1 then
  tokens = tokens - count
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + max_wait) * 2000) + 1000)
return {math.floor(wait * 1000000), taken}
"""


class RedisLimiter:
    """A token bucket of ``rate`` permits per second and ``burst`` saved up, kept in Redis at
    ``url`` under ``<prefix>:<key>``; a local one when Redis cannot be reached."""

    is_async = True

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        url: str | None = None,
        key: str = "default",
        prefix: str = "microframe:limiter",
        timeout: float = 0.05,
        retry_interval: float = 1.0,
    ) -> None:
        if not url:
            raise ValueError(
                "RedisLimiter needs the url of the Redis server: "
                'OPTIONS={"url": "redis://host:6379/0", ...}'
            )
        self.rate = _positive("rate", rate)
        self.burst = _positive("burst", burst if burst is not None else max(1.0, self.rate))
        self.url = url
        #: The url as logs show it: without its password.
        self.shown_url = redact(url)
        self.key = f"{prefix}:{key}"
        self.timeout = _positive("timeout", timeout)
        self.retry_interval = _positive("retry_interval", retry_interval)
        self.fallback = TokenBucket(self.rate, self.burst)
        self._down_until = 0.0
        self._down = False
        self._clients: PerLoop[Any] = PerLoop(self._connect)
        self._metrics = limiter_metrics()
        self._metrics.redis_up.set(1)

    def _connect(self) -> Any:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError as err:  # pragma: no cover - the checks report it first
            raise RuntimeError(
                "RedisLimiter needs the redis package: "
                f'pip install "microframe-grpc[redis]" ({err})'
            ) from err
        # One immediate retry on a new connection (a connection left over from before a Redis
        # restart fails once), no backoff: a dead Redis must cost a call one timeout at most.
        client = aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
            health_check_interval=0,
        )
        return client, client.register_script(TOKEN_BUCKET_SCRIPT)

    def with_key(self, key: str) -> RedisLimiter:
        """A limiter of the same rate and Redis server, counting under another key."""
        prefix = self.key.rsplit(":", 1)[0]
        return RedisLimiter(self.rate, self.burst, url=self.url, key=key, prefix=prefix,
                            timeout=self.timeout, retry_interval=self.retry_interval)

    async def _redis(self, count: int, max_wait: float) -> tuple[float, bool] | None:
        """Ask Redis; None when it cannot answer (and the local bucket must)."""
        if self._down and time.monotonic() < self._down_until:
            return None
        client, script = self._clients.get()
        try:
            wait_us, taken = await with_timeout(
                script(keys=[self.key], args=[self.rate, self.burst, count, min(max_wait, 3600.0)]),
                self.timeout * 2,
            )
        except Exception as err:  # connection refused, timeout, a Redis error: fall back
            self._down_until = time.monotonic() + self.retry_interval
            try:  # drop every pooled connection: after a restart they would all fail once
                await client.connection_pool.disconnect()
            except Exception:
                pass
            if not self._down:
                self._down = True
                self._metrics.redis_up.set(0)
                logger.warning(
                    "limiter: Redis at %s cannot be reached (%s): limiting locally until it is "
                    "back",
                    self.shown_url, type(err).__name__ if not str(err) else err,
                )
            self._metrics.redis_fallbacks.inc()
            return None
        if self._down:
            self._down = False
            self._metrics.redis_up.set(1)
            logger.warning(
                "limiter: Redis at %s is back: the limit is shared again", self.shown_url
            )
        return int(wait_us) / 1e6, bool(taken)

    async def try_acquire(self, count: int = 1) -> float:  # type: ignore[override]
        answer = await self._redis(count, 0.0)
        if answer is None:
            return self.fallback.try_acquire(count)
        wait, taken = answer
        return 0.0 if taken else max(wait, 1e-6)

    async def acquire(self, count: int = 1, max_wait: float = math.inf) -> float:
        answer = await self._redis(count, max_wait)
        if answer is None:
            return await self.fallback.acquire(count, max_wait)
        wait, taken = answer
        if not taken:
            return -max(wait, 1e-6)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def close(self) -> None:
        for client, _ in list(self._clients._objects.values()):
            await client.aclose()
        self._clients.clear()

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(rate={self.rate:g}, burst={self.burst:g}, url={self.shown_url!r}, "
            f"key={self.key!r})"
        )
