"""Deployment checks, run by ``check --deploy``.

- ``microframe.W001``: DEBUG is True.
- ``microframe.W002``: the gRPC server serves plaintext on an address other hosts reach.
- ``microframe.W003``: the metrics endpoint is bound to an address other hosts reach.
"""

from __future__ import annotations

from typing import Any

from microframe.conf import dict_setting, settings
from microframe.core.checks.core_checks import is_loopback
from microframe.core.checks.messages import CheckMessage, Warning
from microframe.core.checks.registry import Tags, register

W001 = Warning(
    "DEBUG is True in deployment.",
    hint="Set DEBUG = False in the production settings (or in conf/<env>/ YAML): DEBUG turns "
    "on the autoreloader and development behaviour.",
    id="microframe.W001",
)


def plaintext(host: str) -> Warning:
    """Return microframe.W002: the server serves plaintext on ``host``."""
    return Warning(
        f'The gRPC server serves plaintext (GRPC["TLS"] is None) on {host!r}, which is not a '
        "loopback address: calls and their metadata travel unencrypted.",
        hint='Set GRPC["TLS"] = {"CERT": ..., "KEY": ...}, or bind to 127.0.0.1 behind a proxy '
        "or sidecar that terminates TLS; silence microframe.W002 if the network is trusted.",
        id="microframe.W002",
    )


def exposed_metrics(host: str) -> Warning:
    """Return microframe.W003: the metrics endpoint listens on ``host``."""
    return Warning(
        f'The metrics endpoint is bound to {host!r} (METRICS["HOST"]), which is not a loopback '
        "address: anyone who reaches it can read /metrics.",
        hint='Bind METRICS["HOST"] to the interface only the scraper reaches, or restrict the '
        "port with a firewall or network policy; silence microframe.W003 if it is.",
        id="microframe.W003",
    )


@register(Tags.settings, Tags.security, deploy=True)
def check_debug(**kwargs: Any) -> list[CheckMessage]:
    """Warn when DEBUG is on (microframe.W001)."""
    return [W001] if getattr(settings, "DEBUG", False) is True else []


@register(Tags.server, Tags.security, deploy=True)
def check_plaintext(**kwargs: Any) -> list[CheckMessage]:
    """Warn when plaintext is served beyond the loopback interface (microframe.W002)."""
    grpc = dict_setting("GRPC")
    if not isinstance(grpc, dict) or grpc["TLS"] is not None:
        return []
    host = grpc["HOST"]
    if not isinstance(host, str) or is_loopback(host):
        return []
    return [plaintext(host)]


@register(Tags.metrics, Tags.security, deploy=True)
def check_metrics_exposure(**kwargs: Any) -> list[CheckMessage]:
    """Warn when the metrics endpoint listens beyond the loopback interface (microframe.W003)."""
    metrics = dict_setting("METRICS")
    if not isinstance(metrics, dict) or not metrics["ENABLED"]:
        return []
    host = metrics["HOST"]
    if not isinstance(host, str) or is_loopback(host):
        return []
    return [exposed_metrics(host)]
