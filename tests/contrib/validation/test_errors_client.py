"""Rich errors as a microframe caller sees them: typed exceptions with their details, a
declared error raised again as its own class by the generated client, RetryInfo honoured by
retries. A real orders service on both transports; the client in this process."""

from __future__ import annotations

import time

import pytest
from google.rpc import error_details_pb2

from microframe.core.exceptions import InvalidArgument, NotFound, ResourceExhausted

from orders.errors import OrderClosed, OrderNotFound
from orders.generate import orders_v1_pb2
from orders.generate.orders_v1_client import OrdersClient
from support.env import ROOT, service_settings

pytestmark = pytest.mark.timeout(60)


def _client(address: str, **options) -> tuple[OrdersClient, object]:
    from microframe.contrib.registry.static import StaticRegistry
    from microframe.discovery.cache import DiscoveryCache

    cache = DiscoveryCache(StaticRegistry(services={"orders": [address]}), None)
    return OrdersClient("orders", discovery=cache, breaker={"ENABLED": False}, **options), cache


async def test_the_caller_gets_typed_errors_with_their_details(start_server):
    server = start_server(settings="orders.settings")
    client, cache = _client(server.address)
    try:
        with pytest.raises(InvalidArgument) as caught:
            await client.Create(orders_v1_pb2.CreateOrder(customer="", lines=[orders_v1_pb2.Line(sku="a", quantity=1)]))
        err = caught.value
        assert err.code.name == "INVALID_ARGUMENT"
        assert err.message == "invalid CreateOrder: customer: must be at least 1 characters"
        (bad,) = err.details
        assert isinstance(bad, error_details_pb2.BadRequest)
        assert [(v.field, v.description) for v in bad.field_violations] == [
            ("customer", "must be at least 1 characters")
        ]
        assert err.reason is None

        # A declared error comes back as its own class, a NotFound too, with its ErrorInfo.
        with pytest.raises(OrderNotFound) as caught:
            await client.Get(orders_v1_pb2.GetOrder(id="o-9"))
        err = caught.value
        assert isinstance(err, NotFound)
        assert (err.reason, err.domain, err.error_metadata) == (
            "ORDER_NOT_FOUND", "orders.example.com", {"order_id": "o-9"}
        )
        assert err.message == "no order 'o-9'"
        with pytest.raises(OrderClosed):
            await client.Get(orders_v1_pb2.GetOrder(id="closed"))
        assert (await client.Get(orders_v1_pb2.GetOrder(id="o-1"))).customer == "ann"
    finally:
        await cache.close()


async def test_retries_honour_the_servers_retry_info(start_server, tmp_path):
    # 5 calls a second, a burst of 1: a second call at once is refused with a RetryInfo of
    # about 0.2 s, and the client's retry (RESOURCE_EXHAUSTED is not in its RETRY CODES) waits
    # that long, then gets through.
    settings = service_settings(
        tmp_path, "limited_orders", "orders", {"REGISTER": False},
        ROOT_ROUTER="orders.app.router",
        LIMITER={"OPTIONS": {"rate": 5, "burst": 1}},
    )
    server = start_server(settings=settings, env={"PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'tests'}"})
    request = orders_v1_pb2.GetOrder(id="o-1")
    once, cache_once = _client(server.address, retry={"MAX_ATTEMPTS": 1})
    twice, cache_twice = _client(server.address, retry={"MAX_ATTEMPTS": 2, "BACKOFF": 0.0})
    try:
        await once.Get(request)
        with pytest.raises(ResourceExhausted) as caught:
            await once.Get(request)
        (info,) = caught.value.details
        assert isinstance(info, error_details_pb2.RetryInfo)
        asked = info.retry_delay.ToNanoseconds() / 1e9
        assert 0.05 < asked <= 0.2
        started = time.monotonic()
        assert (await twice.Get(request, timeout=5)).customer == "ann"
        took = time.monotonic() - started
        assert took >= 0.1, took  # it waited (a retry at once would have been refused again)
        # A deadline shorter than the delay asked: no retry, the refusal is raised.
        await twice.Get(request, timeout=5)
        with pytest.raises(ResourceExhausted):
            await twice.Get(request, timeout=0.05)
    finally:
        await cache_once.close()
        await cache_twice.close()
