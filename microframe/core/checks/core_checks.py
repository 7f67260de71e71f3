"""Checks of the core settings: types and ranges, ports, TLS.

- ``microframe.E001``: a setting has the wrong type or an out-of-range value; ``GRPC`` or
  ``METRICS`` has an unknown (misspelt) key.
- ``microframe.E006``: a port is not an int in 0..65535.
- ``microframe.E007``: the gRPC server and the metrics endpoint would bind the same port.
- ``microframe.E008``: ``GRPC["TLS"]`` does not name existing CERT and KEY files.
- ``microframe.E009``: ``GRPC["EVENT_LOOP"]`` is ``"uvloop"`` but uvloop is not installed.
- ``microframe.E012``: ``GRPC["TRANSPORT"]`` is ``"native"`` but pygrpc-native is not installed;
  ``microframe.E013``: it is ``"native"`` with ``GRPC["TLS"]``; ``microframe.W007``: it is
  ``"native"``, which cannot do what some settings of ``GRPC`` ask (a handshake allowed longer
  than its own 120 s, a grpc argument it refuses).
- ``microframe.W006``: the limits of ``GRPC`` against hostile clients contradict one another
  (one connection may take every call slot, the receive budget holds one message...).
- ``microframe.E014``: a cap of ``GRPC["METHOD_TIMEOUTS"]`` is not a positive number of
  seconds (``microframe.E015``, a name no method of the router has, is checked with the
  router).

``MIDDLEWARE`` and ``ROOT_ROUTER`` are checked with the middleware and the router.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from microframe.conf import dict_setting, settings
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register
from microframe.core.transport import TRANSPORTS

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})

_missing = object()
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def short_repr(value: Any) -> str:
    """Return ``repr(value)``, shortened when long."""
    return _repr.repr(value)


def settings_location() -> str:
    """Return where the settings in force were read from, for hints."""
    files = getattr(settings, "SETTINGS_FILES", None)
    if isinstance(files, (list, tuple)) and files:
        return " or ".join(str(f) for f in files)
    module = getattr(settings, "SETTINGS_MODULE", None)
    return module if isinstance(module, str) and module else "the settings"


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names the loopback interface only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hosts_overlap(first: str, second: str) -> bool:
    """Tell whether servers bound to ``first`` and ``second`` could claim the same socket."""
    a, b = (h.strip().strip("[]").lower() for h in (first, second))
    if a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS:
        return True
    if "localhost" in (a, b):
        return is_loopback(a) and is_loopback(b)
    return False


# Messages. ------------------------------------------------------------------------------------


def wrong_setting(setting: str, expected: str, value: Any, hint: str | None = None) -> Error:
    """Return microframe.E001: ``setting`` holds ``value`` instead of ``expected`` (a secret's
    value is not shown)."""
    from microframe.conf.redaction import redact

    shown = short_repr(redact(value, setting.rsplit("[", 1)[-1].strip('"]')))
    return Error(
        f"{setting} must be {expected}, not {shown} ({type(value).__name__}).",
        hint=hint or f"Set {setting} to {expected} in {settings_location()}.",
        id="microframe.E001",
    )


def invalid_port(setting: str, value: Any) -> Error:
    """Return microframe.E006: ``setting`` is not a port number."""
    return Error(
        f"{setting} must be an int in 0..65535, not {short_repr(value)} ({type(value).__name__}).",
        hint=f"Set {setting} to a port number in {settings_location()}; 0 lets the system "
        "pick a free port.",
        id="microframe.E006",
    )


def port_clash(port: int, grpc_host: str, metrics_host: str) -> Error:
    """Return microframe.E007: the gRPC server and the metrics endpoint share ``port``."""
    return Error(
        f'GRPC["PORT"] and METRICS["PORT"] are both {port} on hosts {grpc_host!r} and '
        f"{metrics_host!r}: the server and the metrics endpoint cannot both bind it.",
        hint='Give METRICS["PORT"] another port (e.g. 9464), bind the two to different '
        'addresses, or set METRICS["ENABLED"] = False.',
        id="microframe.E007",
    )


def unusable_tls(problem: str) -> Error:
    """Return microframe.E008: ``GRPC["TLS"]`` cannot be used, because of ``problem``."""
    return Error(
        f'GRPC["TLS"] is unusable: {problem}',
        hint='Set GRPC["TLS"] = {"CERT": "server.crt", "KEY": "server.key", "CLIENT_CA": None} '
        "with PEM files that exist (relative paths are read from the working directory), "
        "or None to serve plaintext.",
        id="microframe.E008",
    )


E012 = Error(
    'GRPC["TRANSPORT"] is "native" but pygrpc-native is not installed.',
    hint='Install it (pip install "microframe-grpc[native]") or set GRPC["TRANSPORT"] = '
    '"auto", which uses it only when it is installed and applies every limit asked for.',
    id="microframe.E012",
)

E013 = Error(
    'GRPC["TRANSPORT"] is "native" and GRPC["TLS"] is set: the native transport serves '
    "plaintext only.",
    hint='Set GRPC["TRANSPORT"] = "grpc.aio" (or "auto"), or terminate TLS in front of the '
    "service.",
    id="microframe.E013",
)


def native_differs(differences: list[tuple[str, str]]) -> Warning:
    """Return microframe.W007: what ``GRPC`` asks and the native transport cannot do."""
    lines = "; ".join(f'GRPC["{name}"]: {what}' for name, what in differences)
    return Warning(
        f'GRPC["TRANSPORT"] is "native", which does not apply these limits as grpc.aio '
        f"does: {lines}.",
        hint='See docs/topics/transport.md. Set GRPC["TRANSPORT"] = "auto" to keep them '
        "(grpc.aio), or silence microframe.W007 to accept the native transport's own.",
        id="microframe.W007",
    )


E009 = Error(
    'GRPC["EVENT_LOOP"] is "uvloop" but uvloop is not installed.',
    hint='Install it (pip install uvloop) or set GRPC["EVENT_LOOP"] = "auto", which uses '
    "uvloop only when it is installed.",
    id="microframe.E009",
)


# Value tests: each returns whether the value is acceptable. ----------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _positive_int_or_none(value: Any) -> bool:
    return value is None or _positive_int(value)


def _positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0


def _positive_number_or_none(value: Any) -> bool:
    return value is None or _positive_number(value)


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _str_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _path_or_none(value: Any) -> bool:
    return value is None or isinstance(value, (str, os.PathLike))


def _option_pairs(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(o, (list, tuple)) and len(o) == 2 and isinstance(o[0], str) for o in value
    )


def _labels(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and LABEL_NAME_RE.match(k)
        and not k.startswith("__")
        and isinstance(v, str)
        for k, v in value.items()
    )


def _buckets(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(_is_number(b) for b in value)
        and all(a < b for a, b in zip(value, value[1:], strict=False))
    )


Rule = tuple[str, Callable[[Any], bool], str, str | None]

TOP_LEVEL_RULES: list[Rule] = [
    ("DEBUG", lambda v: isinstance(v, bool), "a bool", "Set DEBUG = True or DEBUG = False."),
    ("SERVICE_NAME", _non_empty_str, "a non-empty str", None),
    ("BATTERIES", _str_list, "a list of dotted paths (str)",
     'List packages with a battery.py, e.g. BATTERIES = [*global_settings.BATTERIES, "orders"].'),
    ("SILENCED_SYSTEM_CHECKS", _str_list, "a list of check ids (str)",
     'List the ids to silence, e.g. SILENCED_SYSTEM_CHECKS = ["microframe.W001"].'),
    ("CONF_DIR", _path_or_none, "a directory path (str) or None", None),
    ("LOGGING_CONFIG", _str_or_none, "a dotted path (str) or None", None),
    ("LOGGING_SETUP", _str_or_none, "a dotted path (str) or None", None),
    ("LOGGING", lambda v: isinstance(v, dict), "a dict (logging.config.dictConfig format)", None),
]

GRPC_RULES: list[Rule] = [
    ("HOST", _non_empty_str, "a host name or IP address (str)", None),
    ("MAX_MESSAGE_BYTES", _positive_int, "a positive int", None),
    ("MAX_CONCURRENT_RPCS", _positive_int_or_none, "a positive int or None", None),
    ("MAX_CALLS_PER_CONNECTION", _positive_int_or_none, "a positive int or None", None),
    ("MAX_STREAMS_PER_CONNECTION", _positive_int, "a positive int", None),
    ("MAX_CONNECTIONS", _positive_int, "a positive int", None),
    ("MAX_METADATA_BYTES", lambda v: _is_int(v) and v >= 1024,
     "an int of at least 1024 (bytes)", None),
    ("RECEIVE_BUFFER_BYTES", _positive_int, "a positive int (bytes)", None),
    ("RECEIVE_TIMEOUT", _positive_number, "a positive number of seconds", None),
    ("STREAM_IDLE_TIMEOUT", _positive_number_or_none, "a positive number of seconds or None", None),
    ("SEND_TIMEOUT", _positive_number, "a positive number of seconds", None),
    ("STREAM_WINDOW_BYTES", lambda v: _is_int(v) and 1024 <= v < 1 << 31,
     "an int from 1024 to 2**31 - 1 (bytes)", None),
    ("HANDSHAKE_TIMEOUT", _positive_number, "a positive number of seconds", None),
    ("KEEPALIVE_TIME", _positive_number_or_none, "a positive number of seconds or None", None),
    ("KEEPALIVE_TIMEOUT", _positive_number, "a positive number of seconds", None),
    ("GRACE", lambda v: _is_number(v) and v >= 0, "a non-negative number of seconds", None),
    ("SHUTDOWN_DELAY", lambda v: _is_number(v) and v >= 0,
     "a non-negative number of seconds", None),
    ("HEALTH", lambda v: isinstance(v, bool), "a bool", None),
    ("REFLECTION", lambda v: isinstance(v, bool), "a bool", None),
    ("THREADS", _positive_int_or_none, "a positive int or None", None),
    ("EVENT_LOOP", lambda v: v in EVENT_LOOPS, '"auto", "asyncio" or "uvloop"', None),
    ("TRANSPORT", lambda v: v in TRANSPORTS, '"auto", "grpc.aio" or "native"', None),
    ("OPTIONS", _option_pairs, "a list of (name, value) pairs", None),
    ("METHOD_TIMEOUTS", lambda v: isinstance(v, dict), "a dict of method names to seconds",
     'e.g. GRPC["METHOD_TIMEOUTS"] = {"/orders.Orders/Get": 0.5}.'),
]

#: METRICS["COLORS"]: more would make a series per call color a caller may choose.
MAX_METRIC_COLORS = 16

METRICS_RULES: list[Rule] = [
    ("ENABLED", lambda v: isinstance(v, bool), "a bool", None),
    ("HOST", _non_empty_str, "a host name or IP address (str)", None),
    ("LABELS", _labels, "a dict of Prometheus label names to str values",
     'Use names like "env" or "idc" (letters, digits, underscores; not starting with a digit '
     'or "__") and str values, e.g. {"env": "prod"}.'),
    ("BUCKETS", _buckets, "a non-empty, increasing sequence of numbers", None),
    ("COLORS", lambda v: isinstance(v, list | tuple) and len(v) <= MAX_METRIC_COLORS
     and all(_non_empty_str(c) and c != "other" for c in v),
     f"a list of at most {MAX_METRIC_COLORS} colors (str, not \"other\")",
     'Name the colors of your canaries and shadows, e.g. ["canary", "shadow"]: each one '
     "multiplies the series of every gRPC metric."),
]


def _known_keys(name: str, rules: list[Rule]) -> frozenset[str]:
    """The keys of the dict setting ``name``: those of its default and those its rules check."""
    from microframe.conf import global_settings

    return frozenset(getattr(global_settings, name)) | {key for key, *_ in rules}


GRPC_KEYS = _known_keys("GRPC", GRPC_RULES)
METRICS_KEYS = _known_keys("METRICS", METRICS_RULES)

def _global_key(value: Any) -> bool:
    """An ``x-md-global-*`` metadata key: lower case, a name after the prefix, no ``-bin``."""
    return isinstance(value, str) and re.fullmatch(r"x-md-global-[a-z0-9_.-]+", value) is not None \
        and not value.endswith("-bin")


#: PROPAGATION (microframe.core.propagation): 0 passes no x-md-global-* key on.
PROPAGATION_RULES: list[Rule] = [
    ("MAX_KEYS", lambda v: _positive_int(v) or v == 0, "an int >= 0", None),
    ("MAX_BYTES", lambda v: _positive_int(v) or v == 0, "an int >= 0 (bytes)", None),
    ("STRESS_KEY", _global_key, "an x-md-global-* metadata key in lower case",
     "A load test's mark must travel to every service down the chain: name it x-md-global-*."),
    ("STRESS_COLOR", lambda v: v is None or _non_empty_str(v), "None or a color (a str)", None),
]
PROPAGATION_KEYS = _known_keys("PROPAGATION", PROPAGATION_RULES)


def _apply_rules(
    prefix: str | None, values: dict[str, Any], rules: list[Rule]
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key, test, expected, hint in rules:
        value = values.get(key, _missing)
        if value is _missing:
            continue
        try:
            ok = bool(test(value))
        except TypeError:  # an unhashable value compared with a tuple, etc.
            ok = False
        if not ok:
            name = key if prefix is None else f'{prefix}["{key}"]'
            errors.append(wrong_setting(name, expected, value, hint))
    return errors


def _settings_dict(name: str) -> dict[str, Any] | None:
    """The dict setting ``name`` completed with its defaults, or None when it is no dict."""
    value = dict_setting(name)
    return value if isinstance(value, dict) else None


def _check_port(setting: str, value: Any) -> list[CheckMessage]:
    if _is_int(value) and 0 <= value <= 65535:
        return []
    return [invalid_port(setting, value)]


# Checks. --------------------------------------------------------------------------------------


@register(Tags.settings)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """Check the types of the top-level settings (microframe.E001)."""
    values = {name: getattr(settings, name, _missing) for name, *_ in TOP_LEVEL_RULES}
    return _apply_rules(None, values, TOP_LEVEL_RULES)


@register(Tags.settings, Tags.server)
def check_grpc_settings(**kwargs: Any) -> list[CheckMessage]:
    """Check GRPC: unknown keys and the known ones' types (microframe.E001), its port
    (microframe.E006), uvloop (E009), the caps of METHOD_TIMEOUTS (E014)."""
    grpc = getattr(settings, "GRPC", _missing)
    if grpc is _missing:
        return []
    if not isinstance(grpc, dict):
        return [wrong_setting("GRPC", "a dict", grpc)]
    errors = unknown_keys("GRPC", grpc, GRPC_KEYS, "microframe.E001")
    errors.extend(_apply_rules("GRPC", grpc, GRPC_RULES))
    if "PORT" in grpc:
        errors.extend(_check_port('GRPC["PORT"]', grpc["PORT"]))
    if grpc.get("EVENT_LOOP") == "uvloop" and importlib.util.find_spec("uvloop") is None:
        errors.append(E009)
    if isinstance(grpc.get("METHOD_TIMEOUTS"), dict):
        errors.extend(_method_timeout_values(grpc["METHOD_TIMEOUTS"]))
    if not errors:
        errors.extend(_contradicting_limits(grpc))
    if not errors and grpc.get("TRANSPORT") == "native":
        errors.extend(_native_transport())
    return errors


def _method_timeout_values(table: dict[Any, Any]) -> list[CheckMessage]:
    """microframe.E014: caps that are not a positive number of seconds."""
    return [
        Error(
            f'GRPC["METHOD_TIMEOUTS"][{short_repr(name)}] must be a positive number of seconds, '
            f"not {short_repr(cap)}.",
            hint="A cap is the longest a call of the method may run on the server, e.g. 0.5; "
            "leave a method out for no cap.",
            id="microframe.E014",
        )
        for name, cap in table.items()
        if not _positive_number(cap)
    ]


def _native_transport() -> list[CheckMessage]:
    """microframe.E012 (not installed), E013 (TLS), W007 (limits it applies otherwise)."""
    from microframe.core.server import ServerConfig
    from microframe.core.transport import native_available, native_differences

    if not native_available():
        return [E012]
    config = ServerConfig.from_settings()
    if config.tls:
        return [E013]
    differences = native_differences(config)
    return [native_differs(differences)] if differences else []


def _contradicting_limits(grpc: dict[str, Any]) -> list[CheckMessage]:
    """microframe.W006: limits that undo one another (docs/topics/security.md)."""
    from microframe.conf import global_settings

    grpc = {**global_settings.GRPC, **grpc}
    found: list[CheckMessage] = []
    hint = "See docs/topics/security.md for what each limit protects against."
    calls = grpc.get("MAX_CONCURRENT_RPCS")
    per_connection = grpc.get("MAX_CALLS_PER_CONNECTION")
    if calls is not None and per_connection is not None and per_connection >= calls:
        found.append(Warning(
            f'GRPC["MAX_CALLS_PER_CONNECTION"] ({per_connection}) lets one connection take every '
            f'one of the {calls} call slots (MAX_CONCURRENT_RPCS): a single client can lock the '
            'others out.',
            hint=hint + " Leave it None (a quarter of MAX_CONCURRENT_RPCS) or lower it.",
            id="microframe.W006"))
    share = per_connection if per_connection is not None else (calls // 4 if calls else None)
    streams = grpc.get("MAX_STREAMS_PER_CONNECTION")
    if share and isinstance(streams, int) and streams < share:
        found.append(Warning(
            f'GRPC["MAX_STREAMS_PER_CONNECTION"] ({streams}) is below the calls one connection '
            f"may run ({share}): grpc clients past it see UNAVAILABLE (refused streams), not "
            "RESOURCE_EXHAUSTED.",
            hint=hint, id="microframe.W006"))
    budget, message = grpc.get("RECEIVE_BUFFER_BYTES"), grpc.get("MAX_MESSAGE_BYTES")
    if isinstance(budget, int) and isinstance(message, int) and budget < 4 * message:
        found.append(Warning(
            f'GRPC["RECEIVE_BUFFER_BYTES"] ({budget}) holds {max(1, budget // message)} '
            f"message(s) of MAX_MESSAGE_BYTES ({message}): one slow client takes every receive "
            "slot.",
            hint=hint + " Give it at least 4 messages' worth (64 by default).",
            id="microframe.W006"))
    return found


@register(Tags.settings, Tags.metrics)
def check_metrics_settings(**kwargs: Any) -> list[CheckMessage]:
    """Check METRICS: unknown keys and the known ones' types (microframe.E001), its port
    (microframe.E006)."""
    metrics = getattr(settings, "METRICS", _missing)
    if metrics is _missing:
        return []
    if not isinstance(metrics, dict):
        return [wrong_setting("METRICS", "a dict", metrics)]
    errors = unknown_keys("METRICS", metrics, METRICS_KEYS, "microframe.E001")
    errors.extend(_apply_rules("METRICS", metrics, METRICS_RULES))
    if "PORT" in metrics:
        errors.extend(_check_port('METRICS["PORT"]', metrics["PORT"]))
    return errors


@register(Tags.settings, Tags.client)
def check_propagation_settings(**kwargs: Any) -> list[CheckMessage]:
    """Check PROPAGATION: unknown keys and the caps' types (microframe.E001)."""
    propagation = getattr(settings, "PROPAGATION", _missing)
    if propagation is _missing:
        return []
    if not isinstance(propagation, dict):
        return [wrong_setting("PROPAGATION", "a dict", propagation)]
    errors = unknown_keys("PROPAGATION", propagation, PROPAGATION_KEYS, "microframe.E001")
    errors.extend(_apply_rules("PROPAGATION", propagation, PROPAGATION_RULES))
    return errors


@register(Tags.server, Tags.metrics)
def check_ports(**kwargs: Any) -> list[CheckMessage]:
    """Check that the server and the metrics endpoint bind different sockets (microframe.E007)."""
    grpc, metrics = _settings_dict("GRPC"), _settings_dict("METRICS")
    if grpc is None or metrics is None or not metrics["ENABLED"]:
        return []
    port, metrics_port = grpc["PORT"], metrics["PORT"]
    if not (isinstance(port, int) and _is_int(port) and _is_int(metrics_port)):
        return []
    if port == 0 or port != metrics_port:
        return []
    grpc_host, metrics_host = grpc["HOST"], metrics["HOST"]
    if not (isinstance(grpc_host, str) and isinstance(metrics_host, str)):
        return []
    if not hosts_overlap(grpc_host, metrics_host):
        return []
    return [port_clash(port, grpc_host, metrics_host)]


@register(Tags.server)
def check_tls(**kwargs: Any) -> list[CheckMessage]:
    """Check that GRPC["TLS"], when set, names existing files (microframe.E008)."""
    grpc = _settings_dict("GRPC")
    if grpc is None or grpc.get("TLS") is None:
        return []
    tls = grpc["TLS"]
    if not isinstance(tls, dict):
        return [unusable_tls(
            f"it must be None or a dict with CERT and KEY, not {short_repr(tls)}."
        )]
    errors: list[CheckMessage] = []
    for key in ("CERT", "KEY", "CLIENT_CA"):
        path = tls.get(key)
        if path is None and key == "CLIENT_CA":
            continue
        if not path:
            errors.append(unusable_tls(f"it has no {key} file."))
        elif not isinstance(path, (str, os.PathLike)):
            errors.append(unusable_tls(f"{key} must be a file path, not {short_repr(path)}."))
        elif not Path(path).is_file():
            errors.append(unusable_tls(f"the {key} file {str(path)!r} does not exist."))
        elif not os.access(path, os.R_OK):
            errors.append(unusable_tls(f"the {key} file {str(path)!r} cannot be read."))
    return errors
