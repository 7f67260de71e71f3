"""The etcd configuration backend (``microframe.contrib.config.etcd.EtcdConfig``), on aetcd.

Layout (DESIGN §6): ``<prefix>/_shared/<SETTING>`` holds the JSON of a setting for every
service, ``<prefix>/<service>/<SETTING>`` for one service. Both scopes are read at one revision
(:meth:`EtcdConfig.load`), then followed with one watch of ``<prefix>/`` from the next revision
(:meth:`EtcdConfig.changes`), so that no write falls between the read and the watch.

Settings::

    CONFIG = {
        "BACKEND": "microframe.contrib.config.etcd.EtcdConfig",
        "OPTIONS": {"endpoints": ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]},
    }

``OPTIONS`` are the etcd registry's connection options
(:class:`~microframe.contrib.registry.etcd_transport.EtcdConnection`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import aetcd  # noqa: F401 - to fail here, with the extra to install, when it is missing
    from aetcd import rpc as etcdrpc
    from aetcd.utils import prefix_range_end
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the etcd configuration center needs the aetcd package ({err}): "
        "pip install 'microframe-grpc[etcd]'"
    ) from err

from microframe.contrib.config.backend import (
    SHARED,
    Change,
    ConfigUnavailable,
    InvalidLayer,
    Layers,
    Version,
    check_setting_name,
    entry,
    is_setting_name,
)
from microframe.contrib.registry.etcd_transport import (
    DEFAULT_ENDPOINTS,
    EtcdConnection,
    being_cancelled,
)
from microframe.core.exceptions import ImproperlyConfigured

__all__ = ["EtcdConfig"]

DEFAULT_PREFIX = "/microframe/config"
_PUT = etcdrpc.Event.EventType.PUT
#: Settings of a scope read in one message: a service has a few dozen at most.
PAGE_SIZE = 1000
#: What etcd (``--max-request-bytes``) or the client's channel (its message limit) says of a
#: request too large to take.
TOO_LARGE = ("request is too large", "larger than max")


class EtcdConfig:
    """The settings of ``service`` in etcd, under ``prefix`` (see the module docstring).

    Every method is bounded by the connection's ``timeout`` and raises
    :class:`~microframe.contrib.config.backend.ConfigUnavailable`, naming the endpoints, when
    etcd cannot be reached or refuses the request.
    """

    def __init__(
        self,
        *,
        service: str,
        prefix: str = DEFAULT_PREFIX,
        endpoints: Sequence[str] | str = DEFAULT_ENDPOINTS,
        **options: Any,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ImproperlyConfigured(f'CONFIG["PREFIX"] must start with "/", not {prefix!r}.')
        if not service or "/" in service or service == SHARED:
            raise ImproperlyConfigured(
                f"SERVICE_NAME {service!r} cannot name a configuration scope (empty, a '/', "
                f"or {SHARED!r})."
            )
        self.prefix = prefix.rstrip("/")
        self.service = service
        self._etcd = EtcdConnection(
            endpoints, what="etcd configuration center", error=ConfigUnavailable,
            closed_error=ConfigUnavailable, **options,
        )

    def __repr__(self) -> str:
        return f"<EtcdConfig {','.join(self._etcd.endpoints)} {self.prefix}/{self.service}>"

    def where(self) -> str:
        return self._etcd.where()

    def key(self, setting: str, *, shared: bool = False) -> bytes:
        return f"{self.prefix}/{SHARED if shared else self.service}/{setting}".encode()

    def _scope_prefix(self, shared: bool) -> bytes:
        return f"{self.prefix}/{SHARED if shared else self.service}/".encode()

    def _name_of(self, key: bytes) -> tuple[bool, str] | None:
        """``(shared, setting)`` of a key of either scope, None for another service's."""
        for shared in (True, False):
            scope = self._scope_prefix(shared)
            if key.startswith(scope):
                return shared, key[len(scope):].decode("utf-8", errors="replace")
        return None

    async def load(self) -> Layers:
        """Read both scopes at one revision."""
        layers = Layers()
        for shared in (True, False):
            start = self._scope_prefix(shared)
            end = prefix_range_end(start)
            revision = layers.revision
            reply = await self._etcd.rpc(
                "read", lambda c, s=start, e=end, r=revision: c.get_page(
                    s, e, limit=PAGE_SIZE, revision=r
                ),
            )
            if not layers.revision:
                layers.revision = reply.header.revision
            if reply.more:
                raise ConfigUnavailable(
                    f"{self.where()}: more than {PAGE_SIZE} settings under {start.decode()}"
                )
            for kv in reply.kvs:
                found = self._name_of(bytes(kv.key))
                assert found is not None
                name = found[1]
                try:
                    check_setting_name(name)
                    layers.scope(shared)[name] = entry(bytes(kv.value), kv.mod_revision)
                except InvalidLayer as err:
                    layers.invalid[bytes(kv.key).decode(errors="replace")] = str(err)
        return layers

    async def changes(self, after: int) -> AsyncIterator[list[Change]]:
        """Yield what each revision after ``after`` changed in either scope; raise
        :class:`ConfigUnavailable` when the watch breaks (read again, then watch again)."""
        root = f"{self.prefix}/".encode()
        stream = await self._etcd.rpc(
            "watch", lambda c: c.open_watch(root, prefix_range_end(root), after + 1)
        )
        try:
            while True:
                try:
                    events = await stream.read()
                except (Exception, asyncio.CancelledError) as err:
                    if isinstance(err, asyncio.CancelledError) and being_cancelled():
                        raise
                    if self._etcd.closed:
                        return
                    raise self._etcd.unavailable("watch", err) from err
                changes = []
                for event in events:
                    found = self._name_of(bytes(event.kv.key))
                    if found is None:
                        continue
                    shared, name = found
                    revision = event.kv.mod_revision
                    if event.type != _PUT and not is_setting_name(name):
                        continue  # a key that was never applied went: nothing to refuse
                    try:
                        check_setting_name(name)
                        if event.type == _PUT:
                            changes.append(Change(
                                name, shared, entry(bytes(event.kv.value), revision), revision
                            ))
                        else:
                            changes.append(Change(name, shared, None, revision))
                    except InvalidLayer as err:
                        changes.append(Change(name, shared, None, revision, error=str(err)))
                if changes:
                    yield changes
        finally:
            stream.cancel()

    async def put(self, setting: str, raw: str, *, shared: bool = False) -> int:
        """Store ``raw``; :class:`InvalidLayer` when etcd refuses it for its size."""
        check_setting_name(setting)
        key = self.key(setting, shared=shared)
        value = raw.encode()
        try:
            reply = await self._etcd.rpc("write", lambda c: c.put(key, value))
        except ConfigUnavailable as err:
            if any(sign in str(err) for sign in TOO_LARGE):
                raise InvalidLayer(
                    f"{setting}: the value is {len(value):,} bytes, more than etcd takes in one "
                    "request (its --max-request-bytes, 1.5 MiB by default): nothing stored"
                ) from None
            raise
        return int(reply.header.revision)

    async def delete(self, setting: str, *, shared: bool = False) -> int:
        key = self.key(setting, shared=shared)
        reply = await self._etcd.rpc("write", lambda c: c.delete(key))
        return int(reply.header.revision) if reply is not None else 0

    async def value_at(self, setting: str, revision: int, *, shared: bool = False) -> str | None:
        """The JSON ``setting`` held at ``revision`` (None: not set then)."""
        kv = await self._kv_at(self.key(setting, shared=shared), revision)
        return bytes(kv.value).decode("utf-8", errors="replace") if kv is not None else None

    async def history(self, setting: str, *, shared: bool = False) -> list[Version]:
        """The values the key held since it was last created, newest first (etcd keeps the
        revisions of a key until they are compacted; a key deleted now shows no history)."""
        key = self.key(setting, shared=shared)
        versions: list[Version] = []
        kv = await self._kv_at(key, 0)
        while kv is not None:
            versions.append(Version(kv.mod_revision, bytes(kv.value).decode(errors="replace")))
            if kv.version <= 1:
                break
            try:
                kv = await self._kv_at(key, kv.mod_revision - 1)
            except ConfigUnavailable as err:
                if "compacted" in str(err):
                    break
                raise
        return versions

    async def _kv_at(self, key: bytes, revision: int) -> Any:
        request = etcdrpc.RangeRequest(key=key, revision=revision)
        reply = await self._etcd.rpc(
            "read",
            lambda c: c.kvstub.Range(request, timeout=self._etcd.timeout, metadata=c.metadata),
        )
        return reply.kvs[0] if reply.kvs else None

    async def close(self) -> None:
        await self._etcd.close()
