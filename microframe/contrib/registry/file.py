"""``FileRegistry``: services on one machine find each other through a shared directory.

The default backend: nothing to install or run, so a fresh install serves two services that
call each other. Every instance is one JSON file, ``<directory>/<service>/<instance id>.json``,
holding the instance (the same JSON as etcd's values) plus the process id and the host name of
the process that registered it. It deletes the file when it deregisters or closes.

**A heartbeat is not a change.** The time of an entry's last heartbeat is the file's
modification time: every ``heartbeat`` seconds (``ttl / 3`` by default) the registering process
touches it (``os.utime``), and rewrites it only when its value changed (registered again with a
new weight or metadata) or when the file is gone or someone else's (the directory was cleaned,
the entry expired while the process hung, another process took the id). Watchers follow the
content, not the beats: on Linux they ask inotify for the events that change what a directory
lists or what a file says (a file moved in or out, deleted, written and closed), so the kernel
does not even queue the attribute changes the heartbeats are, and a watcher of a thousand
beating instances sleeps; then they read only the files the events name. (Re-reading the
directory at every beat of every instance would cost each watcher most of a core at 1,000
instances; a beating fleet now costs nothing but the periodic checks below.)

Why the file's own time, rather than a beat file beside it: one file per instance stays the
whole state of an entry, so cleaning the directory (or removing it) cleans everything, any
process that can read the directory judges an entry by one ``stat``, and nothing depends on a
second location that two processes (two containers sharing the directory, two ``TMPDIR``)
could see differently. Touching a file changes only its attributes, which is exactly what the
watch leaves out.

Expiry: readers ignore (and remove, for everyone) an entry whose file was not touched for
``ttl`` seconds (the process hung or was killed) or whose process, on this host, no longer
exists (killed: dropped at the next look, without waiting for the TTL). A watcher looks every
``heartbeat`` seconds, cheaply: one ``kill(pid, 0)`` per process that registered entries, one
listing of the directory (a safety net for events the system would not deliver), and a
``stat`` only of the entries not seen touched for ``ttl`` seconds, the only ones that can have
expired; no file is read or parsed unless an event or the listing says it changed.

Elsewhere than Linux (or when inotify is out of watches), ``watch`` is woken by ``watchfiles``
(which microframe already uses for autoreload), reads only the files its events name, and
re-reads the directory at its start, as the watch comes up in a thread; heartbeats then wake
it, at the price of one small read each. This is a small purpose-made piece rather than a
library: what is wanted is only "a shared directory of heartbeat files", for which no
maintained package exists, and the whole of it fits in this module.

On disk, an entry still carries a ``"heartbeat"`` field: the time it was written, which the
heartbeats do not refresh. Readers of microframe versions that judged entries by that field
(rather than by the file's modification time) see entries of newer processes expire ``ttl``
seconds after they were written: the processes sharing one directory should run the same
version. The other way round works: entries written by older processes (rewritten at every
heartbeat) are followed by newer readers, one file read per heartbeat.

Options: ``directory`` (default: the ``MICROFRAME_REGISTRY_DIR`` environment variable, else
:func:`default_directory`: one directory per project root), ``ttl`` (seconds, default 10),
``heartbeat`` (seconds, default ``ttl / 3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
#: After a first event, how long a watcher lets the ones that follow arrive before it reads:
#: a process registering (or a directory losing) many entries at once is one new set, not one
#: per file, for the price of a few milliseconds.
_SETTLE = 0.005


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


def _pid_alive(pid: int, known: dict[int, bool] | None = None) -> bool:
    """Whether process ``pid`` exists on this host (``known`` caches the answers of one look:
    a process registers many instances, one question is enough)."""
    if known is not None and pid in known:
        return known[pid]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        alive = False
    except PermissionError:  # someone else's process: it exists
        alive = True
    else:
        alive = True
    if known is not None:
        known[pid] = alive
    return alive


def _is_entry(name: str) -> bool:
    """Whether ``name`` in a service's directory is an entry (not a temporary file of an atomic
    write, which starts with a dot)."""
    return name.endswith(".json") and not name.startswith(".")


@dataclass(slots=True)
class _Entry:
    """An entry as a watcher last saw it: enough to tell, without reading it again, whether
    it is the same file (``inode``) and whether it may have expired (``beat``, the modification
    time last seen, is a lower bound of its last heartbeat)."""

    instance: ServiceInstance
    #: Its process, when it runs on this host (0: another host's, or not said).
    pid: int
    inode: int
    beat: float


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
        #: The inode of the file each registration last wrote: a file at its path with another
        #: inode was written by someone else, and the heartbeat writes ours again.
        self._inodes: dict[tuple[str, str], int] = {}
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
        # When it was written; the heartbeats refresh the file's modification time instead.
        record["heartbeat"] = time.time()
        path = self._path(instance)
        try:
            atomic_write_text(path, json.dumps(record, sort_keys=True))
            self._inodes[(instance.name, instance.id)] = os.stat(path).st_ino
        except OSError as err:
            registry_metrics().errors.labels(BACKEND, "register").inc()
            raise RegistryUnavailable(
                f"cannot write to the registry directory {self.directory}: {err}"
            ) from err

    def _touch(
        self, key: tuple[str, str], path: Path
    ) -> Literal["beaten", "missing", "replaced"]:
        """One heartbeat of the entry at ``path``: ``"beaten"`` (its modification time is now),
        ``"missing"`` (no file there) or ``"replaced"`` (a file someone else wrote)."""
        try:
            if os.stat(path).st_ino != self._inodes.get(key):
                return "replaced"
            os.utime(path)
        except OSError:  # gone, or the directory with it: writing again says what is wrong
            return "missing"
        return "beaten"

    def _load(self, path: str, now: float, alive: dict[int, bool]) -> _Entry | None:
        """The entry in file ``path``; None when there is none, or none usable: gone,
        unreadable (logged), expired or left by a process that no longer exists (both then
        removed, for everyone)."""
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                record = json.loads(f.read())
            instance = ServiceInstance.from_dict(record)
            pid = int(record.get("pid", 0))
        except FileNotFoundError:
            return None  # removed since it was listed, or since the event
        except (OSError, ValueError, TypeError, AttributeError, InvalidInstance) as err:
            logger.warning("registry: ignoring unreadable entry %s: %s", path, err)
            return None
        if record.get("hostname") != _HOSTNAME:
            pid = 0  # another host's process: its pid says nothing here
        if now - stat.st_mtime > self.ttl or (pid and not _pid_alive(pid, alive)):
            self._expire(path, stat.st_ino)
            return None
        return _Entry(instance, pid, stat.st_ino, stat.st_mtime)

    @staticmethod
    def _expire(path: str, inode: int) -> None:
        """Remove the expired entry ``path`` for everyone, unless it was written again since
        it was judged (another inode)."""
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)

    def _scan(self, folder: Path) -> dict[str, _Entry]:
        """Every usable entry of ``folder``, by file name: one read of each file."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise RegistryUnavailable(
                f"cannot read the registry directory {folder}: {err}"
            ) from err
        base = os.fspath(folder)
        now = time.time()
        alive: dict[int, bool] = {}
        found: dict[str, _Entry] = {}
        for name in names:
            if not _is_entry(name):
                continue
            entry = self._load(f"{base}/{name}", now, alive)
            if entry is not None:
                found[name] = entry
        return found

    def _read(self, service: str) -> list[ServiceInstance]:
        return _sorted(self._scan(self._service_dir(service)).values())

    # -- the protocol --------------------------------------------------------------------------

    async def register(self, instance: ServiceInstance) -> None:
        key = (instance.name, instance.id)
        self._registered[key] = instance
        if key not in self._heartbeats:
            # The first beat is due a period after this write, even when the task first runs
            # later (a process registering many instances in a row without yielding).
            due = asyncio.get_running_loop().time() + self.heartbeat
            self._heartbeats[key] = asyncio.create_task(
                self._keep_alive(key, due), name=f"microframe-registry-heartbeat-{instance.id}"
            )
        self._write(instance)
        registry_metrics().registrations.labels(BACKEND, instance.name).inc()

    async def _keep_alive(self, key: tuple[str, str], due: float) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self.heartbeat
            instance = self._registered.get(key)
            if instance is None:
                return
            state = self._touch(key, self._path(instance))
            if state != "beaten":
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
            if state == "missing":
                # The file was removed under us (directory cleaned, expired while we hung).
                registry_metrics().lease_losses.labels(BACKEND, instance.name).inc()
                registry_metrics().registrations.labels(BACKEND, instance.name).inc()
                logger.warning(
                    "registry: the entry of %s had disappeared; registered again", instance.id
                )

    async def deregister(self, instance: ServiceInstance) -> None:
        key = (instance.name, instance.id)
        self._registered.pop(key, None)
        self._inodes.pop(key, None)
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
        # The events are asked for before the first read: nothing written after it is missed.
        events = _open_events(folder)
        try:
            entries = self._scan(folder)
            current = _sorted(entries.values())
            yield current
            loop = asyncio.get_running_loop()
            next_check = loop.time() + self.heartbeat
            while True:
                names = await events.wait(max(0.0, next_check - loop.time()))
                if not folder.is_dir():
                    raise RegistryUnavailable(f"the registry directory {folder} was removed")
                if names is None:  # the events cannot say what changed: read everything
                    fresh = self._scan(folder)
                    changed = fresh != entries
                    entries = fresh
                else:
                    changed = self._reread(folder, entries, names)
                if loop.time() >= next_check:
                    changed = self._check(folder, entries) or changed
                    next_check = loop.time() + self.heartbeat
                if changed:
                    now = _sorted(entries.values())
                    if now != current:
                        current = now
                        yield current
        finally:
            events.close()

    def _reread(self, folder: Path, entries: dict[str, _Entry], names: Iterable[str]) -> bool:
        """Read again the files ``names`` of ``folder`` into ``entries``; whether an instance
        came, went or changed its value."""
        now = time.time()
        alive: dict[int, bool] = {}
        changed = False
        base = os.fspath(folder)
        for name in names:
            entry = self._load(f"{base}/{name}", now, alive)
            if entry is None:
                changed = entries.pop(name, None) is not None or changed
            else:
                old = entries.get(name)
                entries[name] = entry
                changed = changed or old is None or old.instance != entry.instance
        return changed

    def _check(self, folder: Path, entries: dict[str, _Entry]) -> bool:
        """The periodic look of a watcher at what no event announces: processes gone, entries
        that stopped beating, and (the safety net) files the events missed. Cheap: one
        listing, one ``kill(pid, 0)`` per process, a ``stat`` of only the entries not seen
        beating for a TTL (the others cannot have expired). Whether the set changed."""
        try:
            names = set(os.listdir(folder))
        except OSError as err:
            raise RegistryUnavailable(
                f"cannot read the registry directory {folder}: {err}"
            ) from err
        base = os.fspath(folder)
        again = {name for name in names - entries.keys() if _is_entry(name)}
        gone = [name for name in entries if name not in names]
        for name in gone:
            del entries[name]
        pids = {entry.pid for entry in entries.values() if entry.pid}
        dead = {pid for pid in pids if not _pid_alive(pid)}
        now = time.time()
        stale = now - self.ttl
        for name, entry in entries.items():
            if entry.pid in dead:
                self._expire(f"{base}/{name}", entry.inode)
                gone.append(name)
            elif entry.beat < stale:
                # Not seen beating for a TTL: look at the file's time (and only then).
                try:
                    stat = os.stat(f"{base}/{name}")
                except FileNotFoundError:
                    gone.append(name)
                    continue
                except OSError:
                    continue
                if stat.st_ino != entry.inode:
                    again.add(name)  # written again, and no event said so
                elif stat.st_mtime < stale:
                    self._expire(f"{base}/{name}", entry.inode)
                    gone.append(name)
                else:
                    entry.beat = stat.st_mtime
        for name in gone:
            entries.pop(name, None)
        return self._reread(folder, entries, again) or bool(gone)

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


def _sorted(entries: Iterable[_Entry]) -> list[ServiceInstance]:
    return sorted((entry.instance for entry in entries), key=lambda i: i.id)


# -- what wakes a watcher --------------------------------------------------------------------


class _Events:
    """The file events of one service's directory, as the names of the entries they concern."""

    async def wait(self, timeout: float) -> set[str] | None:
        """The names of the entries that changed (empty: none within ``timeout`` seconds), or
        None when the events cannot say which: every file is to be read again. Raises
        :class:`RegistryUnavailable` when the watch broke (the directory was removed)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _open_events(folder: Path) -> _Events:
    """inotify on Linux, watchfiles elsewhere (or when inotify refuses: out of watches)."""
    if sys.platform.startswith("linux"):
        try:
            return _Inotify(folder)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                raise RegistryUnavailable(f"cannot watch {folder}: {err}") from err
            logger.debug("registry: inotify unavailable (%s); watching with watchfiles", err)
    return _Watchfiles(folder)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        raise OSError(errno.ENOSYS, "no inotify in the C library")
    return libc


class _Inotify(_Events):
    """inotify, asked only for what changes the entries (names in or out, content written)
    and not for attribute changes, which is all a heartbeat is: the kernel does not even queue
    the beats, and they never wake a watcher. watchfiles cannot leave them out (it reports a
    touched file as modified, and its thread wakes every few milliseconds to collect events),
    so on Linux its three calls are made directly, through ctypes, and the descriptor is read
    by the event loop itself: no thread, no polling, a change seen as soon as it is made."""

    _CLOSE_WRITE, _MOVED_FROM, _MOVED_TO = 0x8, 0x40, 0x80
    _DELETE, _DELETE_SELF, _MOVE_SELF = 0x200, 0x400, 0x800
    _UNMOUNT, _Q_OVERFLOW, _IGNORED, _ONLYDIR = 0x2000, 0x4000, 0x8000, 0x1000000
    _MASK = _CLOSE_WRITE | _MOVED_FROM | _MOVED_TO | _DELETE | _DELETE_SELF | _MOVE_SELF | _ONLYDIR
    _GONE = _DELETE_SELF | _MOVE_SELF | _UNMOUNT | _IGNORED
    _HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then name)

    def __init__(self, folder: Path) -> None:
        libc = _libc()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        try:
            if libc.inotify_add_watch(fd, os.fsencode(folder), self._MASK) < 0:
                code = ctypes.get_errno()
                raise OSError(code, f"{os.strerror(code)}: {folder}")
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._on_readable)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._folder = fd, folder
        self._names: set[str] = set()
        self._overflow = False
        self._failure: RegistryUnavailable | None = None
        self._ready = asyncio.Event()

    def _on_readable(self) -> None:
        # Drained here, as the loop says the descriptor is readable, so that it is not
        # readable again at the next turn of the loop while ``wait`` lets a burst settle.
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            except OSError as err:
                self._fail(f"watching {self._folder} failed: {err}")
                return
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = os.fsdecode(data[offset:offset + length].split(b"\0", 1)[0])
                offset += length
                if mask & self._Q_OVERFLOW:
                    self._overflow = True
                elif mask & self._GONE:
                    self._fail(f"the registry directory {self._folder} was removed")
                    return
                elif _is_entry(name):
                    self._names.add(name)
        if self._names or self._overflow:
            self._ready.set()

    def _fail(self, message: str) -> None:
        self._failure = RegistryUnavailable(message)
        self._loop.remove_reader(self._fd)
        self._ready.set()

    async def wait(self, timeout: float) -> set[str] | None:
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await with_timeout(self._ready.wait(), timeout)
            if self._ready.is_set():
                await asyncio.sleep(_SETTLE)
        if self._failure is not None:
            raise self._failure
        self._ready.clear()
        names, self._names = self._names, set()
        overflow, self._overflow = self._overflow, False
        return None if overflow else names

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class _Watchfiles(_Events):
    """watchfiles (inotify, FSEvents, ReadDirectoryChangesW), read in a task. It reports a
    heartbeat as a modification, so each beat costs a watcher one file read; its watch starts
    in a thread, so for its first second the directory is re-read every 0.1 s (a change made
    before it listens is not missed)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._names: set[str] = set()
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        loop = asyncio.get_running_loop()
        self._young_until = loop.time() + 1.0
        self._pump = loop.create_task(self._run(), name=f"microframe-registry-watch-{folder.name}")

    async def _run(self) -> None:
        import watchfiles

        try:
            async for changes in watchfiles.awatch(
                self._folder, debounce=20, step=10, recursive=False, watch_filter=None
            ):
                self._names.update(
                    name for _change, path in changes if _is_entry(name := os.path.basename(path))
                )
                if self._names:
                    self._ready.set()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the watcher itself failed (directory removed...)
            self._failure = err
            self._ready.set()

    async def wait(self, timeout: float) -> set[str] | None:
        young = asyncio.get_running_loop().time() < self._young_until
        with contextlib.suppress(TimeoutError):
            await with_timeout(self._ready.wait(), min(timeout, 0.1) if young else timeout)
        if self._failure is not None:
            raise RegistryUnavailable(f"watching {self._folder} failed: {self._failure}")
        self._ready.clear()
        names, self._names = self._names, set()
        return None if young else names

    def close(self) -> None:
        self._pump.cancel()
