"""System checks of the tracing battery (tag ``tracing``).

- ``tracing.E001``: ``TRACING`` is not a dict, has unknown keys, or names an unknown backend.
- ``tracing.E002``: tracing is on and the backend's packages are not installed.
- ``tracing.E003``: ``TRACING["SAMPLER"]`` is not a valid sampler.
- ``tracing.E004``: the agent or collector address is not ``HOST:PORT``.
- ``tracing.W001`` (``--deploy``): every request is traced (a ``const`` sampler at 1).
"""

from __future__ import annotations

from typing import Any

from microframe.conf import dict_setting, global_settings
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
from microframe.core.checks.registry import Tags, register
from microframe.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = global_settings.TRACING
KNOWN_KEYS = set(DEFAULTS)
BACKENDS = ("jaeger", "otlp", "log")


@register(Tags.tracing, Tags.settings)
def check_tracing_settings(**kwargs: Any) -> list[CheckMessage]:
    from microframe.contrib.tracing.tracers import _host_port, check_sampler

    config = dict_setting("TRACING")
    if not isinstance(config, dict):
        return [Error(f"TRACING must be a dict, not {type(config).__name__}.",
                      hint='TRACING = {"ENABLED": True, "BACKEND": "jaeger"}', id="tracing.E001")]
    errors: list[CheckMessage] = []
    errors.extend(unknown_keys("TRACING", config, KNOWN_KEYS, "tracing.E001"))
    backend = config["BACKEND"]
    if backend not in BACKENDS and not (isinstance(backend, str) and "." in backend):
        errors.append(Error(f'TRACING["BACKEND"] {backend!r} is not a tracing backend.',
                            hint='Use "jaeger", "otlp", "log" or the dotted path of a factory.',
                            id="tracing.E001"))
    try:
        check_sampler(config["SAMPLER"])
    except ImproperlyConfigured as err:
        errors.append(Error(str(err), hint='e.g. {"type": "probabilistic", "param": 0.01}',
                            id="tracing.E003"))
    reporter = config.get("REPORTER") or {}
    otlp = config.get("OTLP") or {}
    try:
        if backend == "jaeger" and "LOCAL_AGENT_HOST_PORT" in reporter:
            _host_port(reporter["LOCAL_AGENT_HOST_PORT"], 'REPORTER["LOCAL_AGENT_HOST_PORT"]')
        if backend == "otlp" and "ENDPOINT" in otlp:
            _host_port(otlp["ENDPOINT"], 'OTLP["ENDPOINT"]')
    except ImproperlyConfigured as err:
        errors.append(Error(str(err),
                            hint="e.g. 127.0.0.1:6831 (Jaeger agent) or 127.0.0.1:4317 (OTLP).",
                            id="tracing.E004"))
    if config.get("ENABLED") and backend in BACKENDS:
        module = "jaeger_client" if backend == "jaeger" else "opentelemetry.sdk.trace"
        try:
            __import__(module)
        except ImportError as err:
            errors.append(Error(
                f'TRACING["BACKEND"] = "{backend}" needs a package that is not installed: {err}',
                hint='pip install "microframe-grpc[tracing]"',
                id="tracing.E002",
            ))
    return errors


@register(Tags.tracing, deploy=True)
def check_tracing_deployment(**kwargs: Any) -> list[CheckMessage]:
    config = dict_setting("TRACING")
    if not isinstance(config, dict) or not config["ENABLED"]:
        return []
    sampler: Any = config["SAMPLER"] or DEFAULTS["SAMPLER"]
    const = isinstance(sampler, dict) and sampler.get("type") == "const"
    if const and sampler.get("param"):
        return [Warning(
            "Every request is traced (a const sampler at 1): each one costs a reported span.",
            hint='Sample a share in production: TRACING["SAMPLER"] = {"type": "probabilistic", '
            '"param": 0.01}.',
            id="tracing.W001",
        )]
    return []
