"""The etcd fixtures of every test that meets real etcd (the registry, the configuration center,
coordination): loaded for the whole suite by ``tests/conftest.py``.

- ``etcd``: one member shared by the tests that do not harm it (each uses its own ``prefix``);
- ``etcd3``: a 3-member cluster shared the same way;
- ``make_cluster(size=1, tls=None)``: clusters of the test's own, to stop, kill and restart;
- ``prefix``: a key prefix of the test's own.

The shared clusters start on first use, once per session; every process is killed at the end,
pass or fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from support.etcd_cluster import EtcdCluster, TlsFiles


def _running(size: int) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(size=size)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One etcd member shared by the tests that do not harm it (each uses its own prefix)."""
    yield from _running(1)


@pytest.fixture(scope="session")
def etcd3() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster shared by the tests that do not harm it."""
    yield from _running(3)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., EtcdCluster]]:
    """Start clusters of the test's own; every process is killed at the end, pass or fail."""
    clusters: list[EtcdCluster] = []

    def make(size: int = 1, tls: TlsFiles | None = None) -> EtcdCluster:
        cluster = EtcdCluster(size=size, tls=tls)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own."""
    return f"/test/{uuid.uuid4().hex[:10]}"
