"""A client's options: keyword arguments, then ``CLIENTS[service]``, then the defaults below.

Keyword arguments use the lower-case names (``timeout=0.5``, ``balancer="round_robin"``),
settings the upper-case ones::

    CLIENTS = {
        "orders": {"TIMEOUT": 0.5, "BALANCER": "round_robin", "RETRY": {"MAX_ATTEMPTS": 2}},
    }
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import grpc

from microframe.client.breaker import breaker_options
from microframe.core.exceptions import ImproperlyConfigured

#: What a client uses when neither its arguments nor ``CLIENTS`` say otherwise.
DEFAULTS: dict[str, Any] = {
    # Seconds a call may take (its deadline), unless the call says otherwise; a call made while
    # serving a request never outlives that request's own deadline.
    "TIMEOUT": 2.0,
    # random | round_robin | weighted_random | p2c_ewma, or a dotted path.
    "BALANCER": "p2c_ewma",
    "RETRY": {
        # Attempts in all, the first included (1: no retry).
        "MAX_ATTEMPTS": 3,
        # Status codes retried besides UNAVAILABLE from a connection that never reached a handler.
        "CODES": [],
        # Backoff before attempt n: BACKOFF * 2**(n-2), at most BACKOFF_MAX, with full jitter.
        "BACKOFF": 0.02,
        "BACKOFF_MAX": 0.5,
        # Retries allowed as a share of the calls of the last 10 s (plus MIN_PER_SECOND).
        "BUDGET_RATIO": 0.1,
        "BUDGET_MIN_PER_SECOND": 10,
    },
    # The circuit breaker of each method: keys and defaults in microframe.client.breaker.DEFAULTS.
    "BREAKER": {},
    # Seconds to wait for a connection to an instance before trying another.
    "CONNECT_TIMEOUT": 1.0,
    # Of a fleet larger than this, call only this many instances (0: all); SUBSET_KEY, the
    # client's key in the draw (default: host name and process id). See client.membership.
    "SUBSET_SIZE": 32,
    "SUBSET_KEY": None,
    # {"CA": path, "CERT": path, "KEY": path, "SERVER_NAME": str}: TLS (mTLS with CERT/KEY).
    "TLS": None,
    # Metadata sent with every call of this client, as (key, value) pairs.
    "METADATA": [],
    # grpc channel arguments, as (name, value) pairs.
    "CHANNEL_OPTIONS": [],
    # At most this many calls per second from this process to the service (None: no limit), in
    # bursts of up to LIMIT_BURST (None: one second's worth); a call over it waits up to
    # LIMIT_WAIT seconds for its turn (0: fails at once with RESOURCE_EXHAUSTED).
    "LIMIT_QPS": None,
    "LIMIT_BURST": None,
    "LIMIT_WAIT": 0.0,
    # Seconds a call of a method may take, replacing TIMEOUT for it: {"Get": 0.2} for the
    # method Get of any service, {"/orders.Orders/List": 1.5} for one method (it wins over
    # the method's bare name). A call's own timeout= still wins; a call made while serving
    # still never outlives the request being served.
    "METHOD_TIMEOUTS": {},
    # A call of a color (x-md-global-color) no instance has: False sends it to the uncolored
    # instances, True refuses it with UNAVAILABLE (microframe.client.colors).
    "COLOR_STRICT": False,
}

_RETRY_KEYS = set(DEFAULTS["RETRY"])

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: A key of METHOD_TIMEOUTS: a method's name, or its full name (the leading slash optional).
METHOD_KEY_RE = re.compile(rf"^(?:{_NAME}|/?{_NAME}(?:\.{_NAME})*/{_NAME})$")


class MethodTimeoutsError(ImproperlyConfigured):
    """``METHOD_TIMEOUTS`` of a client is not a dict of method names to positive seconds."""


def method_timeout_problems(table: Any) -> list[str]:
    """Return what is wrong with ``table``, a client's ``METHOD_TIMEOUTS`` (empty when it is
    sound): one sentence per bad key or value."""
    if not isinstance(table, dict):
        return [f"METHOD_TIMEOUTS must be a dict of method names to seconds, not {table!r}."]
    problems = []
    for key, value in table.items():
        if not isinstance(key, str) or not METHOD_KEY_RE.match(key):
            problems.append(
                f"METHOD_TIMEOUTS key {key!r} is not a method name: use the method's name "
                '("Get") or its full name ("/orders.Orders/Get").'
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(
                f"METHOD_TIMEOUTS[{key!r}] must be a positive number of seconds, not {value!r}."
            )
    return problems


def _method_timeouts(service: str, table: Any) -> dict[str, float]:
    """``table`` with full names spelt ``/package.Service/Method``; MethodTimeoutsError when
    it is unsound."""
    problems = method_timeout_problems(table)
    if problems:
        raise MethodTimeoutsError(f"The client of {service!r}: {' '.join(problems)}")
    return {
        (key if "/" not in key or key.startswith("/") else f"/{key}"): float(value)
        for key, value in table.items()
    }


@dataclass(frozen=True)
class RetryOptions:
    max_attempts: int = 3
    codes: frozenset[grpc.StatusCode] = frozenset()
    backoff: float = 0.02
    backoff_max: float = 0.5
    budget_ratio: float = 0.1
    budget_min_per_second: float = 10


@dataclass(frozen=True)
class ClientOptions:
    """The resolved options of one client (see :data:`DEFAULTS`)."""

    timeout: float = 2.0
    balancer: str = "p2c_ewma"
    retry: RetryOptions = field(default_factory=RetryOptions)
    breaker: dict[str, Any] = field(default_factory=dict)
    connect_timeout: float = 1.0
    subset_size: int = 32
    subset_key: str | None = None
    tls: dict[str, Any] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    channel_options: tuple[tuple[str, Any], ...] = ()
    limit_qps: float | None = None
    limit_burst: float | None = None
    limit_wait: float = 0.0
    method_timeouts: dict[str, float] = field(default_factory=dict)
    color_strict: bool = False

    def method_timeout(self, method: str) -> float:
        """Return the timeout of the calls of ``method`` (``/package.Service/Method``) that
        give none: its ``METHOD_TIMEOUTS`` entry (by full name, else by name), else
        ``TIMEOUT``. The client's chain asks once per method, when it is built."""
        table = self.method_timeouts
        if table:
            timeout = table.get(method)
            if timeout is None:
                timeout = table.get(method.rpartition("/")[2])
            if timeout is not None:
                return timeout
        return self.timeout

    @classmethod
    def resolve(cls, service: str, **kwargs: Any) -> ClientOptions:
        """Merge ``kwargs`` over ``CLIENTS[service]`` over :data:`DEFAULTS`."""
        from microframe.conf import settings

        merged: dict[str, Any] = {
            k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()
        }
        configured: dict[str, Any] = {}
        try:
            configured = (getattr(settings, "CLIENTS", None) or {}).get(service) or {}
        except ImproperlyConfigured:
            pass  # a script without settings: defaults and arguments only
        for source in (configured, {k.upper(): v for k, v in kwargs.items()}):
            for key, value in source.items():
                if key not in DEFAULTS:
                    raise ImproperlyConfigured(
                        f"Unknown client option {key!r} for {service!r}; "
                        f"known: {', '.join(sorted(DEFAULTS))}."
                    )
                if key == "BREAKER" and isinstance(value, dict):
                    merged["BREAKER"] = {**merged["BREAKER"], **value}
                elif key == "RETRY" and isinstance(value, dict):
                    unknown = set(value) - _RETRY_KEYS
                    if unknown:
                        raise ImproperlyConfigured(
                            f"Unknown RETRY option(s) {sorted(unknown)} for {service!r}."
                        )
                    merged["RETRY"] = {**merged["RETRY"], **value}
                else:
                    merged[key] = value
        retry = merged["RETRY"]
        try:
            codes = frozenset(
                c if isinstance(c, grpc.StatusCode) else grpc.StatusCode[str(c).upper()]
                for c in retry["CODES"]
            )
            options = cls(
                timeout=float(merged["TIMEOUT"]),
                balancer=str(merged["BALANCER"]),
                retry=RetryOptions(
                    max_attempts=max(1, int(retry["MAX_ATTEMPTS"])),
                    codes=codes,
                    backoff=float(retry["BACKOFF"]),
                    backoff_max=float(retry["BACKOFF_MAX"]),
                    budget_ratio=float(retry["BUDGET_RATIO"]),
                    budget_min_per_second=float(retry["BUDGET_MIN_PER_SECOND"]),
                ),
                breaker=breaker_options(merged["BREAKER"]),
                connect_timeout=float(merged["CONNECT_TIMEOUT"]),
                subset_size=int(merged["SUBSET_SIZE"]),
                subset_key=str(merged["SUBSET_KEY"]) if merged["SUBSET_KEY"] else None,
                tls=merged["TLS"],
                metadata=tuple((str(k), str(v)) for k, v in merged["METADATA"]),
                channel_options=tuple(tuple(o) for o in merged["CHANNEL_OPTIONS"]),  # type: ignore[misc]
                limit_qps=float(merged["LIMIT_QPS"]) if merged["LIMIT_QPS"] is not None else None,
                limit_burst=float(merged["LIMIT_BURST"])
                if merged["LIMIT_BURST"] is not None
                else None,
                limit_wait=float(merged["LIMIT_WAIT"]),
                color_strict=merged["COLOR_STRICT"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ImproperlyConfigured(f"Invalid client options for {service!r}: {err}") from err
        if options.timeout <= 0:
            raise ImproperlyConfigured(
                f"The TIMEOUT of the client of {service!r} must be positive."
            )
        if options.limit_qps is not None and options.limit_qps <= 0:
            raise ImproperlyConfigured(
                f"The LIMIT_QPS of the client of {service!r} must be positive (or None)."
            )
        if options.limit_burst is not None and options.limit_burst < 1:
            raise ImproperlyConfigured(
                f"The LIMIT_BURST of the client of {service!r} must be at least 1."
            )
        size = merged["SUBSET_SIZE"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImproperlyConfigured(
                f"The SUBSET_SIZE of the client of {service!r} must be a whole number >= 0."
            )
        if not isinstance(options.color_strict, bool):
            raise ImproperlyConfigured(
                f"The COLOR_STRICT of the client of {service!r} must be True or False."
            )
        if options.limit_wait < 0:
            raise ImproperlyConfigured(f"The LIMIT_WAIT of the client of {service!r} must be >= 0.")
        if merged["METHOD_TIMEOUTS"] != {}:
            options = dataclasses.replace(
                options, method_timeouts=_method_timeouts(service, merged["METHOD_TIMEOUTS"])
            )
        return options
