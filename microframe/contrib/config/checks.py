"""System checks of the configuration center (tag ``config``).

- ``config.E001``: ``CONFIG`` is not a dict, has unknown keys, or a bad ``BACKEND``,
  ``OPTIONS``, ``PREFIX``, ``RELOAD`` or ``CACHE_DIR``.
- ``config.E002``: ``RELOAD`` names a microframe setting that a running service cannot apply
  (its batteries build what they derive from it once, at start-up: ``GRPC``, ``REGISTRY``...).
- ``config.W001``: the settings come from the disk cache: the configuration center could not
  be reached at start-up.
- ``config.W002``: settings changed in the configuration center that serving processes of
  this service on this host run without, until they restart.
- ``config.W003``: a stored key is not a setting's JSON (it is ignored).
"""

from __future__ import annotations

from typing import Any

from microframe.conf import global_settings, settings
from microframe.contrib.config.live import LIVE_KEYS, reloadable
from microframe.core.checks.messages import CheckMessage, Error, Warning, unknown_keys
from microframe.core.checks.registry import register

HINT = (
    'e.g. CONFIG = {"BACKEND": "microframe.contrib.config.etcd.EtcdConfig", '
    '"OPTIONS": {"endpoints": ["127.0.0.1:2379"]}}'
)
KNOWN_KEYS = set(global_settings.CONFIG)


@register("config", "settings")
def check_config_settings(**kwargs: Any) -> list[CheckMessage]:
    from microframe.conf import deep_merge
    from microframe.utils.module_loading import import_string

    configured = getattr(settings, "CONFIG", None)
    if not isinstance(configured, dict):
        return [Error(f"CONFIG must be a dict, not {type(configured).__name__}.", hint=HINT,
                      id="config.E001")]
    errors: list[CheckMessage] = unknown_keys("CONFIG", configured, KNOWN_KEYS, "config.E001")
    config = deep_merge(global_settings.CONFIG, configured)
    backend = config["BACKEND"]
    if backend is not None:
        if not isinstance(backend, str):
            errors.append(Error(f'CONFIG["BACKEND"] must be a dotted path or None, not '
                                f"{backend!r}.", hint=HINT, id="config.E001"))
        else:
            try:
                import_string(backend)
            except ImportError as err:
                errors.append(Error(f'CONFIG["BACKEND"] {backend!r} cannot be imported: {err}',
                                    hint='pip install "microframe-grpc[etcd]"',
                                    id="config.E001"))
    if not isinstance(config["OPTIONS"], dict):
        errors.append(Error('CONFIG["OPTIONS"] must be a dict of keyword arguments.', hint=HINT,
                            id="config.E001"))
    prefix = config["PREFIX"]
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.rstrip("/") == "":
        errors.append(Error(f'CONFIG["PREFIX"] must be a key prefix starting with "/", not '
                            f"{prefix!r}.", hint='"/microframe/config"', id="config.E001"))
    cache_dir = config["CACHE_DIR"]
    if cache_dir is not None and not isinstance(cache_dir, str):
        errors.append(Error(f'CONFIG["CACHE_DIR"] must be a directory (str) or None, not '
                            f"{cache_dir!r}.", id="config.E001"))
    reload = config["RELOAD"]
    if not isinstance(reload, (list, tuple)) or not all(isinstance(n, str) for n in reload):
        errors.append(Error(f'CONFIG["RELOAD"] must be a list of setting names, not {reload!r}.',
                            hint=f"e.g. {global_settings.CONFIG['RELOAD']!r}", id="config.E001"))
        return errors
    for name in reload:
        if not reloadable(name):
            errors.append(Error(
                f'CONFIG["RELOAD"] lists {name}, which a running service cannot apply: '
                "what it configures is built once, at start-up.",
                hint=f"Remove it (a change of {name} is applied at the next restart); the "
                f"microframe settings that can be reloaded are {', '.join(sorted(LIVE_KEYS))}, "
                "and the service's own.",
                id="config.E002",
            ))
    return errors


@register("config")
def check_config_state(**kwargs: Any) -> list[CheckMessage]:
    from microframe.contrib.config.layers import state
    from microframe.contrib.config.reload import read_restart_file

    configured = getattr(settings, "CONFIG", None)
    if not isinstance(configured, dict) or not configured.get("BACKEND"):
        return []
    messages: list[CheckMessage] = []
    if state.from_cache and state.layers is not None:
        messages.append(Warning(
            f"The configuration center could not be reached: the settings stored there come "
            f"from the cache {state.source} (revision {state.layers.revision}).",
            hint="They are followed again as soon as it answers; check CONFIG[\"OPTIONS\"] "
            "and the etcd cluster.",
            id="config.W001",
        ))
    if state.layers is not None:
        for key, why in sorted(state.layers.invalid.items()):
            messages.append(Warning(f"The configuration center's key {key} is ignored: {why}.",
                                    hint="python manage.py config unset SETTING (or set it)",
                                    id="config.W003"))
    for pid, pending in sorted(read_restart_file(str(settings.SERVICE_NAME)).items()):
        names = ", ".join(f"{name} (revision {rev})" for name, rev in sorted(pending.items()))
        messages.append(Warning(
            f"Process {pid} of {settings.SERVICE_NAME} runs without the stored values of "
            f"{names}: they need a restart.",
            hint="Restart it to apply them (or put the old values back).",
            id="config.W002",
        ))
    return messages
