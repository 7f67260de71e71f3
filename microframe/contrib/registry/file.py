"""``FileRegistry``: services on one machine find each other through a shared directory.

The default backend: nothing to install or run, so a fresh install serves two services that
call each other. Every instance is one JSON file, ``<directory>/<service>/<instance id>.json``,
holding the instance (the same JSON as etcd's values) plus the process id, the host name and
the time of its last heartbeat. The registering process rewrites it every ``heartbeat``
seconds (``ttl / 3`` by default) and deletes it when it deregisters or closes.

Readers ignore (and remove) an entry whose heartbeat is older than ``ttl`` (the process hung
or was killed) or whose process, on this host, no longer exists (killed: dropped at once,
without waiting for the TTL). A registration whose file disappeared (someone cleaned the
directory) is written again by the next heartbeat.

``watch`` is woken by the operating system's file events (inotify, through ``watchfiles``,
which microframe already uses for autoreload) and, every ``heartbeat`` seconds, re-reads the
directory to expire what stopped beating. This is a small purpose-made piece rather than a
library: what is wanted is only "a shared directory of heartbeat files", for which no
maintained package exists, and the whole of it fits in this module.

Options: ``directory`` (default: the ``MICROFRAME_REGISTRY_DIR`` environment variable, else
:func:`default_directory`: one directory per project root), ``ttl`` (seconds, default 10),
``heartbeat`` (seconds, default ``ttl / 3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from microframe.discovery.instance import InvalidInstance, ServiceInstance
from microframe.discovery.metrics import registry_metrics
from microframe.discovery.registry import RegistryUnavailable
from microframe.utils.files import atomic_write_text
from microframe.utils.timeouts import with_timeout

logger = logging.getLogger("microframe.registry")

BACKEND = "file"
#: Environment variable naming the directory when the options do not (handy to give a set of
#: services, or a test session, their own directory).
DIRECTORY_ENV = "MICROFRAME_REGISTRY_DIR"
#: Where the per-project directories of :func:`default_directory` live.
DEFAULT_PARENT = Path(tempfile.gettempdir()) / "microframe-registry"
_HOSTNAME = socket.gethostname()


def project_root() -> Path:
    """The directory holding the service's package: the parent of ``SERVICE_ROOT`` (the
    settings module's directory), or the working directory when no settings are configured."""
    from microframe.conf import ENVIRONMENT_VARIABLE, settings

    if settings.configured or os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(settings.SERVICE_ROOT).resolve().parent
    return Path.cwd().resolve()


def default_directory(root: Path | None = None) -> Path:
    """``<temp dir>/microframe-registry/<project root's name>-<8 hex digits of its path>``.

    Services whose packages sit side by side in one project root (``shop/orders``,
    ``shop/users``) share a directory and find each other; two checkouts of the same service,
    or unrelated projects, never see (and split) each other's instances. Services in different
    roots that should meet give themselves one directory (``MICROFRAME_REGISTRY_DIR``, or the
    ``directory`` option).
    """
    root = (root or project_root()).resolve()
    digest = hashlib.blake2s(str(root).encode(), digest_size=4).hexdigest()
    name = re.sub(r"[^\w.-]+", "_", root.name) or "root"
    return DEFAULT_PARENT / f"{name}-{digest}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class FileRegistry:
    """Instances registered as heartbeat files in a directory shared by the local services."""

    backend_name = BACKEND

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        ttl: float = 10.0,
        heartbeat: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        self.directory = Path(directory or os.environ.get(DIRECTORY_ENV) or default_directory())
        self.ttl = float(ttl)
        self.heartbeat = float(heartbeat) if heartbeat else self.ttl / 3
        if not 0 < self.heartbeat < self.ttl:
            raise ValueError(f"heartbeat ({self.heartbeat}) must be between 0 and ttl ({self.ttl})")
        self._registered: dict[tuple[str, str], ServiceInstance] = {}
        self._heartbeats: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._closed = False

    # -- files ---------------------------------------------------------------------------------

    def _service_dir(self, service: str) -> Path:
        if not service or "/" in service or service.startswith("."):
            raise ValueError(f"invalid service name {service!r}")
        return self.directory / service

    def _path(self, instance: ServiceInstance) -> Path:
        return self._service_dir(instance.name) / f"{instance.id}.json"

    def _write(self, instance: ServiceInstance) -> None:
        record: dict[str, Any] = instance.to_dict()
        record["pid"] = os.getpid()
        record["hostname"] = _HOSTNAME
        record["heartbeat"] = time.time()
        try:
            atomic_write_text(self._path(instance), json.dumps(record, sort_keys=True))
        except OSError as err:
            registry_metrics().errors.labels(BACKEND, "register").inc()
            raise RegistryUnavailable(
                f"cannot write to the registry directory {self.directory}: {err}"
            ) from err

    def _read(self, service: str) -> list[ServiceInstance]:
        folder = self._service_dir(service)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise RegistryUnavailable(
                f"cannot read the registry directory {folder}: {err}"
            ) from err
        now = time.time()
        found: list[ServiceInstance] = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = folder / name
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                instance = ServiceInstance.from_dict(record)
                beat = float(record.get("heartbeat", 0))
                pid = int(record.get("pid", 0))
            except FileNotFoundError:
                continue  # removed between listdir and read
            except (OSError, ValueError, InvalidInstance) as err:
                logger.warning("registry: ignoring unreadable entry %s: %s", path, err)
                continue
            same_host = record.get("hostname") == _HOSTNAME
            if now - beat > self.ttl or (same_host and pid and not _pid_alive(pid)):
                # Expired, or its process is gone: drop it for everyone.
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(instance)
        found.sort(key=lambda i: i.id)
        return found

    # -- the protocol --------------------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        key = (instance.name, instance.id)
        self._registered[key] = instance
        if key not in self._heartbeats:
            self._heartbeats[key] = asyncio.create_task(
                self._keep_alive(key), name=f"microframe-registry-heartbeat-{instance.id}"
            )
        self._write(instance)
        registry_metrics().registrations.labels(BACKEND, instance.name).inc()

    async def _keep_alive(self, key: tuple[str, str]) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat)
            instance = self._registered.get(key)
            if instance is None:
                return
            existed = self._path(instance).exists()
            try:
                self._write(instance)
            except RegistryUnavailable as err:
                if not failing:
                    logger.warning("registry: heartbeat of %s failed: %s", instance.id, err)
                failing = True
                continue
            if failing:
                logger.info("registry: %s registered again", instance.id)
                failing = False
            if not existed:
                # The file was removed under us (directory cleaned, expired while we hung).
                registry_metrics().lease_losses.labels(BACKEND, instance.name).inc()
                registry_metrics().registrations.labels(BACKEND, instance.name).inc()
                logger.warning(
                    "registry: the entry of %s had disappeared; registered again", instance.id
                )

    async def deregister(self, instance: ServiceInstance) -> None:
        key = (instance.name, instance.id)
        self._registered.pop(key, None)
        task = self._heartbeats.pop(key, None)
        if task is not None:
            task.cancel()
        try:
            self._path(instance).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            registry_metrics().errors.labels(BACKEND, "deregister").inc()
            raise RegistryUnavailable(f"cannot remove {self._path(instance)}: {err}") from err

    async def instances(self, service: str) -> list[ServiceInstance]:
        return self._read(service)

    async def watch(self, service: str) -> AsyncIterator[list[ServiceInstance]]:
        folder = self._service_dir(service)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RegistryUnavailable(
                f"cannot create the registry directory {folder}: {err}"
            ) from err
        changed = asyncio.Event()
        failure: list[BaseException] = []
        pump = asyncio.create_task(self._pump_file_events(folder, changed, failure))
        try:
            current = self._read(service)
            yield current
            # The file watcher starts in a thread: a change made before it listens is caught
            # by the quick re-reads of the first second, later ones by the events; the
            # heartbeat-period re-read expires the entries that stopped beating.
            started = asyncio.get_running_loop().time()
            while True:
                young = asyncio.get_running_loop().time() - started < 1.0
                try:
                    await with_timeout(changed.wait(), 0.1 if young else self.heartbeat)
                except TimeoutError:
                    pass
                changed.clear()
                if failure:
                    raise RegistryUnavailable(f"watching {folder} failed: {failure[0]}")
                if not folder.is_dir():
                    raise RegistryUnavailable(f"the registry directory {folder} was removed")
                now = self._read(service)
                if now != current:
                    current = now
                    yield current
        finally:
            pump.cancel()

    @staticmethod
    async def _pump_file_events(
        folder: Path, changed: asyncio.Event, failure: list[BaseException]
    ) -> None:
        import watchfiles

        try:
            async for _changes in watchfiles.awatch(folder, debounce=20, step=10, recursive=False):  # noqa: B007
                changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the watcher itself failed (directory removed...)
            failure.append(err)
            changed.set()

    async def services(self) -> list[str]:
        try:
            names = sorted(
                p.name for p in self.directory.iterdir()
                if p.is_dir() and not p.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as err:
            raise RegistryUnavailable(
                f"cannot read the registry directory {self.directory}: {err}"
            ) from err
        return [name for name in names if self._read(name)]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for instance in list(self._registered.values()):
            with contextlib.suppress(RegistryUnavailable):
                await self.deregister(instance)
