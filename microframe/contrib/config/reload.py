"""Hot reload: a serving process follows the configuration center and applies its changes.

:class:`Reloader` runs in every process that serves calls (runserver's server, each worker of
``--workers N``). For each stored change it works out the setting's new value (the local one,
then the shared layer, then the service's), and:

1. a setting listed in ``CONFIG["RELOAD"]`` whose change is live (:mod:`.live`) is checked
   first: the system checks run with the new value in place, and a value that brings an error
   the current one does not have is refused, the old value put back, the check's id logged
   and counted (``microframe_config_rejected_total``). A value that passes is applied:
   ``settings`` holds it, and ``setting_changed`` is sent, on which the batteries rebuild what
   they derived from it (the server its middleware chains, the logging battery the level,
   clients their options). The calls in flight finish on what they started with;
2. any other change is not applied at all: it is logged, exported as
   ``microframe_config_restart_required{setting}`` and recorded for ``check`` (the
   ``config.W002`` warning) until the process restarts or the value comes back.

When the configuration center goes away nothing changes: the process keeps the values it
has, says so (``microframe_config_up`` 0), and when the center is back reads the layers again
and applies what changed meanwhile, as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from microframe.contrib.config import layers as config_layers
from microframe.contrib.config.backend import (
    Change,
    ConfigBackend,
    ConfigUnavailable,
    Layers,
    config_options,
    make_backend,
)
from microframe.contrib.config.layers import MISSING, effective, save_cache, state
from microframe.contrib.config.live import restart_keys
from microframe.contrib.config.metrics import config_metrics

logger = logging.getLogger("microframe.config")

#: Seconds between attempts to follow the configuration center again after losing it (the
#: first attempt is at once, then the wait doubles up to this).
RETRY_MAX = 2.0


class Refused(Exception):
    """A new value of a setting fails its checks (``check`` names the first one)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


def error_key(message: Any) -> tuple[str, str]:
    return (str(message.id), str(message.msg))


def check_errors() -> list[Any]:
    """The errors the system checks find in the current settings (silenced ones left out)."""
    from microframe.conf import settings
    from microframe.core.checks import ERROR
    from microframe.core.checks.registry import registry

    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()) or ())
    return [
        m for m in registry.run_checks()
        if m.level >= ERROR and m.id not in silenced
    ]


def set_setting(name: str, value: Any) -> None:
    from microframe.conf import settings

    if value is MISSING:
        with contextlib.suppress(AttributeError):
            delattr(settings, name)
    else:
        setattr(settings, name, value)


def current(name: str) -> Any:
    from microframe.conf import settings

    return getattr(settings, name, MISSING)


def checked(name: str, value: Any, baseline: set[tuple[str, str]]) -> None:
    """Raise :class:`Refused` when ``value`` of ``name`` brings a check error that the
    current settings do not have; the settings are as before either way."""
    old = current(name)
    set_setting(name, value)
    try:
        new_errors = [m for m in check_errors() if error_key(m) not in baseline]
    except Exception as err:  # a check that crashes on the value refuses it
        new_errors = []
        crash: Exception | None = err
    else:
        crash = None
    finally:
        set_setting(name, old)
    if crash is not None:
        raise Refused("config.check", f"the checks failed on the new value: {crash!r}")
    if new_errors:
        # The battery's own check names the problem best; the core checks (microframe.*) that
        # build the chains report it again as a middleware that cannot be built.
        new_errors.sort(key=lambda m: str(m.id).startswith("microframe."))
        first = new_errors[0]
        raise Refused(str(first.id), "; ".join(f"{m.id}: {m.msg}" for m in new_errors))


def apply(name: str, value: Any) -> None:
    """Set ``name`` to ``value`` and send ``setting_changed``; when a receiver cannot take it
    the old value is put back (and announced again) and :class:`Refused` raised."""
    from microframe.core.signals import setting_changed

    old = current(name)
    set_setting(name, value)
    try:
        setting_changed.send(Reloader, setting=name, value=value, enter=True)
    except Exception as err:
        set_setting(name, old)
        with contextlib.suppress(Exception):
            setting_changed.send(
                Reloader, setting=name, value=None if old is MISSING else old, enter=True
            )
        raise Refused("config.apply", f"{type(err).__name__}: {err}") from err


def restart_file(service: str) -> Path:
    return config_layers.cache_path(service).with_suffix(".restart.json")


def read_restart_file(service: str) -> dict[str, dict[str, int]]:
    """What each serving process of ``service`` on this host waits to restart for (pid ->
    setting -> revision), the processes that no longer run left out."""
    try:
        data = json.loads(restart_file(service).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    alive = {}
    for pid, pending in data.items():
        try:
            os.kill(int(pid), 0)
        except (OSError, ValueError):
            continue
        alive[pid] = pending
    return alive


def write_restart_file(service: str, pending: dict[str, int]) -> None:
    """Record what this process waits to restart for (nothing: remove its entry). The
    processes of a host share the file: each change is made under an exclusive lock of
    ``<file>.lock`` (``fcntl.flock``), so that two processes writing at once lose nothing."""
    import fcntl

    from microframe.utils.files import atomic_write_text

    path = restart_file(service)
    try:
        config_layers.cache_directory(service)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = read_restart_file(service)
            if pending:
                data[str(os.getpid())] = dict(pending)
            else:
                data.pop(str(os.getpid()), None)
            if data:
                atomic_write_text(path, json.dumps(data, sort_keys=True))
            else:
                path.unlink(missing_ok=True)
    except OSError as err:
        logger.warning("cannot record the settings waiting for a restart in %s: %s", path, err)


class Reloader:
    """Follow the configuration center and apply its changes (see the module docstring)."""

    def __init__(self, backend: ConfigBackend | None = None) -> None:
        self._backend = backend
        self._task: asyncio.Task[None] | None = None
        self._baseline: set[tuple[str, str]] | None = None
        self.metrics = config_metrics()

    @property
    def reload(self) -> set[str]:
        names = config_options().get("RELOAD") or []
        return {n for n in names if isinstance(n, str)}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="microframe config reloader")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._backend is not None:
            await self._backend.close()
        if state.restart_needed:
            write_restart_file(self.service, {})

    @property
    def service(self) -> str:
        from microframe.conf import settings

        return str(settings.SERVICE_NAME)

    async def _run(self) -> None:
        if self._backend is None:
            self._backend = make_backend()
        backend = self._backend
        assert backend is not None and state.layers is not None
        self.metrics.revision.set(state.layers.revision)
        delay = 0.0
        caught_up = not state.from_cache
        while True:
            try:
                if not caught_up:
                    self.catch_up(await backend.load())
                    caught_up = True
                self.metrics.up.set(1)
                if delay:
                    logger.info("following the configuration center at %s again", backend.where())
                    delay = 0.0
                async for changes in backend.changes(state.layers.revision):
                    self.handle(changes)
                return  # the backend was closed
            except ConfigUnavailable as err:
                self.metrics.up.set(0)
                caught_up = False
                log = logger.warning if not delay else logger.debug
                log("configuration center unreachable, running on the values applied: %s", err)
                delay = min(RETRY_MAX, delay * 2 or 0.25)
                await asyncio.sleep(delay)
            except Exception:  # never let the follower die on a bug: log it and go on
                logger.exception("configuration reloader failed; following again")
                self.metrics.up.set(0)
                caught_up = False
                delay = RETRY_MAX
                await asyncio.sleep(delay)

    # -- changes -------------------------------------------------------------------------------

    def catch_up(self, layers: Layers) -> None:
        """Apply what changed between the layers applied and ``layers`` (read anew)."""
        old = state.layers or Layers()
        changes: list[Change] = []
        for shared in (True, False):
            before, after = old.scope(shared), layers.scope(shared)
            for name in before.keys() | after.keys():
                entry = after.get(name)
                if before.get(name) != entry:
                    revision = entry.revision if entry is not None else layers.revision
                    changes.append(Change(name, shared, entry, revision))
        self.handle(changes, revision=layers.revision)

    def handle(self, changes: list[Change], revision: int | None = None) -> None:
        """Apply one revision's ``changes`` (see the module docstring)."""
        assert state.layers is not None
        layers = replace(
            state.layers, shared=dict(state.layers.shared), service=dict(state.layers.service)
        )
        touched: dict[str, int] = {}
        for change in changes:
            scope = layers.scope(change.shared)
            if change.error is not None:
                logger.error(
                    "configuration center: refusing %s (%s scope, revision %d): %s",
                    change.setting, "shared" if change.shared else "service", change.revision,
                    change.error,
                )
                self.metrics.rejected.labels(change.setting, "config.invalid").inc()
                continue
            if change.entry is None:
                scope.pop(change.setting, None)
            else:
                scope[change.setting] = change.entry
            touched[change.setting] = change.revision
        layers.revision = max([revision or 0, *touched.values(), layers.revision])
        state.layers = layers
        for name, at in sorted(touched.items()):
            self._settle(name, layers, at)
        self.metrics.revision.set(layers.revision)
        save_cache(self.service, layers, state.source)

    def _settle(self, name: str, layers: Layers, revision: int) -> None:
        wanted = effective(name, state.local, layers)
        running = current(name)
        if wanted == running:
            self._restart_done(name)
            return
        parts = restart_keys(name, None if running is MISSING else running,
                             None if wanted is MISSING else wanted)
        if name not in self.reload or parts:
            why = "it is not in CONFIG[\"RELOAD\"]" if name not in self.reload else (
                f"{', '.join(parts)} cannot change while the service runs"
            )
            logger.warning(
                "%s changed in the configuration center (revision %d) and needs a restart: "
                "%s; running with the old value", name, revision, why,
            )
            state.restart_needed[name] = revision
            self.metrics.restart_required.labels(name).set(1)
            write_restart_file(self.service, state.restart_needed)
            return
        started = time.monotonic()
        try:
            if self._baseline is None:
                self._baseline = {error_key(m) for m in check_errors()}
            checked(name, wanted, self._baseline)
            apply(name, wanted)
        except Refused as refusal:
            logger.error(
                "%s from the configuration center (revision %d) refused, the old value kept: "
                "%s", name, revision, refusal,
            )
            self.metrics.rejected.labels(name, refusal.check).inc()
            return
        self._restart_done(name)
        self.metrics.applied.labels(name).inc()
        logger.info(
            "%s applied from the configuration center (revision %d) in %.1f ms",
            name, revision, (time.monotonic() - started) * 1000,
        )

    def _restart_done(self, name: str) -> None:
        if state.restart_needed.pop(name, None) is not None:
            self.metrics.restart_required.labels(name).set(0)
            write_restart_file(self.service, state.restart_needed)
