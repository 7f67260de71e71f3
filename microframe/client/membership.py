"""What a client follows of its service's discovery: the instances it calls (a subset of a
large fleet), the channels it keeps open, and the per-instance state it holds.

A :class:`Membership` per :class:`~microframe.client.Client`. On its first call it takes the
set discovery knows and subscribes to the changes; each change then costs what changed: an
instance listed anew is given its chance again (its ejection cleared), an instance gone has its
ejection and balancer statistics dropped, and a channel is closed when no instance of the
service is listed at its address any more. The others are left alone, whatever else changed.

**Subsetting** (``SUBSET_SIZE``, default 32): of a fleet larger than that, a client calls only
``SUBSET_SIZE`` instances, so that its connections and its per-instance state stay bounded
however many instances a service has, and a fleet of N instances called by C clients sees
about ``C * SUBSET_SIZE / N`` connections per instance instead of C.

The subset is drawn by rendezvous hashing (highest random weight): every instance gets a score
from a hash of the client's key and the instance id, and the client calls the
``SUBSET_SIZE`` best-scored instances that are not ejected. Google SRE's deterministic
subsetting is exactly even, but needs each client to know its own index among all the clients
and reshuffles the subsets as the fleet changes size; rendezvous needs neither: an instance in
``SUBSET_SIZE / N`` of the subsets on average, and when an instance leaves (or is ejected), only
the subsets it was in change, each by one member, the next best. An instance ejected (it
refused connections) is replaced the same way until it is back, so a fleet full of dead
entries never leaves a client with a subset of the dead. The client's key is
``SUBSET_KEY`` (default: the host name and process id): set it (to a pod name, say) for a
subset that survives restarts.

This is written here rather than taken from a package: what it needs is a sorted list of
scores kept in step with discovery's changes, a few dozen lines on ``bisect``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from bisect import bisect_left, insort
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from microframe.discovery.cache import InstanceList, SetChanges
from microframe.discovery.instance import ServiceInstance

#: How many replacements, in subset sizes, are probed ahead of need (see Membership._warm).
AHEAD = 3
#: Seconds a successful probe of an instance is trusted (it is not probed again meanwhile).
PROBE_FRESH = 10.0

#: What a subset's list says changed (a subset is made whole, not from discovery's changes).
_NOTHING_CHANGED = SetChanges()

#: The default ``SUBSET_SIZE``: enough instances for balancing to mean something (and a few
#: to retry on), few enough that a client of a fleet of thousands keeps a few dozen channels.
DEFAULT_SUBSET_SIZE = 32


def default_subset_key() -> str:
    """The key of this process's subsets: its host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SubsetList(InstanceList):
    """A client's subset of a service's instances: none of them ejected when it was made (the
    balancer need not be told the ejections again)."""

    __slots__ = ()


class Subset:
    """The ``size`` best-scored instances of a service for one client key, ejected ones
    replaced (see the module's description)."""

    def __init__(self, size: int, key: str) -> None:
        self.size = size
        self._salt = key.encode() + b"\0"
        self._scores: dict[str, int] = {}
        self._order: list[tuple[int, str]] = []  # ascending: the best last
        self._by_id: dict[str, ServiceInstance] = {}
        self._version = 0
        self._made: tuple[int, frozenset[str] | None, Sequence[ServiceInstance]] | None = None
        #: The next best after the members (AHEAD times as many): the first replacements.
        self.ahead: list[ServiceInstance] = []

    def score(self, instance_id: str) -> int:
        score = self._scores.get(instance_id)
        if score is None:
            digest = hashlib.blake2b(self._salt + instance_id.encode(), digest_size=8).digest()
            score = self._scores[instance_id] = int.from_bytes(digest, "big")
        return score

    def put(self, instance: ServiceInstance) -> None:
        if instance.id not in self._by_id:
            insort(self._order, (self.score(instance.id), instance.id))
        self._by_id[instance.id] = instance
        self._version += 1

    def remove(self, instance_id: str) -> None:
        if self._by_id.pop(instance_id, None) is None:
            return
        entry = (self._scores.pop(instance_id), instance_id)
        del self._order[bisect_left(self._order, entry)]
        self._version += 1

    def reset(self, instances: Sequence[ServiceInstance]) -> None:
        self._by_id = {i.id: i for i in instances}
        self._scores = {key: self.score(key) for key in self._by_id}
        self._order = sorted((score, key) for key, score in self._scores.items())
        self._version += 1

    def __len__(self) -> int:
        return len(self._by_id)

    def members(self, ejected: frozenset[str] | None) -> Sequence[ServiceInstance]:
        """The instances to call: the best-scored not in ``ejected`` (the best-scored of all
        when every one is), in id order; the same list until the set or ``ejected`` changes."""
        made = self._made
        if made is not None and made[0] == self._version and made[1] is ejected:
            return made[2]
        chosen: list[ServiceInstance] = []
        ahead: list[ServiceInstance] = []
        by_id, size = self._by_id, self.size
        for _, key in reversed(self._order):
            if not ejected or key not in ejected:
                if len(chosen) < size:
                    chosen.append(by_id[key])
                else:
                    ahead.append(by_id[key])
                    if len(ahead) == AHEAD * size:
                        break
        self.ahead = ahead
        if not chosen:  # all ejected: better a try on one than none
            chosen = [by_id[key] for _, key in self._order[-size:]]
        chosen.sort(key=lambda i: i.id)
        members = SubsetList(chosen)
        members.weights = [i.weight for i in chosen]
        members.changes = _NOTHING_CHANGED
        self._made = (self._version, ejected, members)
        return members


class Membership:
    """The instances one client follows, and what it keeps per instance (see the module).

    ``release(address)`` is called when no instance of the service is listed at ``address``
    any more (its channel can be closed); ``ejections`` and ``balancer`` are the client's;
    ``probe(address)`` tells whether an address accepts connections and ``has_channel`` whether
    the client has a channel to it (to probe the members of a new subset ahead of calls).
    """

    def __init__(
        self,
        *,
        ejections: Any,
        balancer: Any,
        release: Callable[[str], None],
        subset_size: int = DEFAULT_SUBSET_SIZE,
        subset_key: str | None = None,
        probe: Callable[[str], Awaitable[bool]] | None = None,
        has_channel: Callable[[str], bool] = lambda address: False,
    ) -> None:
        self._ejections = ejections
        self._forget_stats = getattr(balancer, "forget_instance", None)
        self._forget_all = (
            getattr(balancer, "forget", None) if self._forget_stats is None else None
        )
        self._unlisted: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release = release
        self._subset = Subset(subset_size, subset_key or default_subset_key()) if (
            subset_size > 0
        ) else None
        self._subset_size = subset_size
        self._listed: dict[str, ServiceInstance] = {}  # id -> instance
        self._at: dict[str, int] = {}  # address -> instances listed there
        self._seen: Sequence[ServiceInstance] | None = None
        # Probing the subset's members ahead of calls (see _warm).
        self._probe = probe
        self._has_channel = has_channel
        self._last_members: Sequence[ServiceInstance] | None = None
        self._warming: set[str] = set()
        self._probed: dict[str, float] = {}  # id -> when a probe last found it accepting
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def following(self) -> bool:
        """Whether this follows discovery on the running event loop (a client may serve calls
        on several loops over its life, each with its discovery cache)."""
        return self._loop is asyncio.get_running_loop()

    async def probe_instance(self, instance_id: str) -> bool | None:
        """Whether the listed instance ``instance_id`` accepts a connection (the ejections'
        prober); None when it is not listed (any more)."""
        instance = self._listed.get(instance_id)
        if instance is None or self._probe is None:
            return None
        return await self._probe(instance.address)

    def follow(self, discovery: Any, service: str, instances: Sequence[ServiceInstance]) -> None:
        """Start following ``service`` from ``instances``, the set discovery knows now."""
        self._loop = asyncio.get_running_loop()
        self._seen = None
        self._reset(instances)
        subscribe = getattr(discovery, "subscribe", None)
        if subscribe is not None:
            subscribe(service, self.changed)

    def view(self, instances: Sequence[ServiceInstance]) -> Sequence[ServiceInstance]:
        """The instances a call may go to: ``instances`` itself, or this client's subset of
        them when they are more than ``SUBSET_SIZE``."""
        subset = self._subset
        if subset is None or len(instances) <= self._subset_size:
            return instances
        if instances is not self._seen:  # a set the listener has not seen (not discovery's)
            self._reset(instances)
        return self._members(subset)

    def _members(self, subset: Subset) -> Sequence[ServiceInstance]:
        ejections = self._ejections
        members = subset.members(ejections.current() if ejections else None)
        if members is not self._last_members:
            self._last_members = members
            if self._probe is not None:
                self._warm(members)
                self._warm(subset.ahead)
        return members

    def _warm(self, members: Sequence[ServiceInstance]) -> None:
        """Probe the members the client has no channel to yet (and their first replacements),
        all at once in the background, and eject those that refuse: in a fleet of dead entries
        the subset is walked in a few rounds of probes, before calls land on the dead."""
        fresh = time.monotonic() - PROBE_FRESH
        probed = self._probed
        for instance in members:
            key = instance.id
            if (
                key in self._warming
                or probed.get(key, -PROBE_FRESH) > fresh
                or self._has_channel(instance.address)
            ):
                continue
            self._warming.add(key)
            task = asyncio.get_running_loop().create_task(self._probe_one(instance))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe_one(self, instance: ServiceInstance) -> None:
        try:
            assert self._probe is not None
            refused = not await self._probe(instance.address)
        finally:
            self._warming.discard(instance.id)
        if instance.id not in self._listed:
            return  # gone meanwhile
        if not refused:
            self._probed[instance.id] = time.monotonic()
        else:
            self._ejections.eject(instance.id)
            if self._subset is not None:  # its replacement is probed in turn, calls or not
                self._members(self._subset)

    def current(self, instances: Sequence[ServiceInstance]) -> Sequence[ServiceInstance]:
        """The subset now (its ejected members replaced), for a call that had ``instances``
        (the subset when it started, or the whole set when there is no subset)."""
        subset = self._subset
        if subset is None or len(subset) <= self._subset_size or self._seen is None:
            return instances
        return self._members(subset)

    # -- following changes ---------------------------------------------------------------------

    def changed(self, service: str, instances: Sequence[ServiceInstance]) -> None:
        """A new set: apply what changed (``instances.changes`` when discovery says it, else
        the difference with the set before, worked out here)."""
        if instances is self._seen:
            return
        changes = getattr(instances, "changes", None)
        if changes is None or self._seen is None:
            self._reset(instances)
            return
        self._seen = instances
        self._apply(changes.added, changes.removed, changes.updated)

    def _reset(self, instances: Sequence[ServiceInstance]) -> None:
        """Follow ``instances``, a set whose difference with the one before is not known."""
        new = {i.id: i for i in instances}
        listed = self._listed
        removed = [i for key, i in listed.items() if key not in new]
        updated = [(listed[key], i) for key, i in new.items() if key in listed and listed[key] != i]
        added = [i for key, i in new.items() if key not in listed]
        self._seen = instances
        self._apply(added, removed, updated)

    def _apply(
        self,
        added: Sequence[ServiceInstance],
        removed: Sequence[ServiceInstance],
        updated: Sequence[tuple[ServiceInstance, ServiceInstance]],
    ) -> None:
        # An address is released once the whole change is applied, if no instance is listed
        # there then: an instance registered again with a new weight, or restarted under a new
        # id at the same address, keeps its channel (and the calls on it).
        self._unlisted: set[str] = set()
        for instance in removed:
            self._gone(instance)
        for before, after in updated:  # a new weight, metadata or address: the same instance
            self._gone(before, forget=False)
            self._listed_anew(after, cleared=False)
        for instance in added:
            self._listed_anew(instance, cleared=True)
        for address in self._unlisted:
            if address not in self._at:
                self._release(address)
        if self._forget_all is not None and (removed or updated):
            self._forget_all(set(self._listed))  # a balancer of the user's, keep-list style

    def _listed_anew(self, instance: ServiceInstance, *, cleared: bool) -> None:
        self._listed[instance.id] = instance
        self._at[instance.address] = self._at.get(instance.address, 0) + 1
        if cleared:
            # It had left (or is new): it gets its chance again.
            self._ejections.clear(instance.id)
        if self._subset is not None:
            self._subset.put(instance)

    def _gone(self, instance: ServiceInstance, *, forget: bool = True) -> None:
        if self._listed.pop(instance.id, None) is None:
            return
        left = self._at.get(instance.address, 0) - 1
        if left > 0:
            self._at[instance.address] = left
        else:
            self._at.pop(instance.address, None)
            self._unlisted.add(instance.address)
        if self._subset is not None:
            self._subset.remove(instance.id)
        if forget:
            self._probed.pop(instance.id, None)
            self._ejections.drop(instance.id)
            if self._forget_stats is not None:
                self._forget_stats(instance.id)
