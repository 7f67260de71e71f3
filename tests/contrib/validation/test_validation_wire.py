"""Validation on the wire: a real orders service (rules in its proto), called by a plain grpc
client, its errors decoded with grpcio-status, on both transports."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orders.generate import orders_v1_pb2, orders_v1_pb2_grpc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def orders(start_server):
    server = start_server(settings="orders.settings")
    with grpc.insecure_channel(server.address) as channel:
        yield orders_v1_pb2_grpc.OrdersStub(channel), server


def _bad_request(err: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin"
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            found += [(v.field, v.description) for v in request.field_violations]
    return found


def test_an_invalid_request_is_answered_invalid_argument_with_its_field_violations(orders):
    stub, server = orders
    bad = orders_v1_pb2.CreateOrder(
        customer="", coupon="lower",
        lines=[orders_v1_pb2.Line(sku="", quantity=1), orders_v1_pb2.Line(sku="b", quantity=0)],
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Create(bad, timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "invalid CreateOrder: customer: must be at least 1 characters (and 3 more)"
    assert _bad_request(err) == [
        ("customer", "must be at least 1 characters"),
        ("lines[0].sku", "must be at least 1 characters"),
        ("lines[1].quantity", "must be greater than 0 and less than or equal to 1000"),
        ("coupon", "does not match regex pattern `^[A-Z0-9]{0,12}$`"),
    ]
    # A valid one goes through, and the controller saw it.
    good = orders_v1_pb2.CreateOrder(customer="ann", lines=[orders_v1_pb2.Line(sku="a", quantity=2)])
    assert stub.Create(good, timeout=10).lines == 1


def test_a_cel_rule_on_the_message(orders):
    stub, _ = orders
    with pytest.raises(grpc.RpcError) as caught:
        stub.Refund(orders_v1_pb2.RefundRequest(order_id="o-1", amount=9, paid=5), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(caught.value) == [("", "amount must not exceed what was paid")]
    assert stub.Refund(orders_v1_pb2.RefundRequest(order_id="o-1", amount=5, paid=5), timeout=10).id == "o-1"


def test_every_message_of_a_request_stream_is_validated(orders):
    stub, _ = orders
    good = orders_v1_pb2.CreateOrder(customer="ann", lines=[orders_v1_pb2.Line(sku="a", quantity=1)])
    assert stub.Import(iter([good, good, good]), timeout=10).imported == 3
    bad = orders_v1_pb2.CreateOrder(customer="bob")  # no lines
    with pytest.raises(grpc.RpcError) as caught:
        stub.Import(iter([good, bad, good]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(caught.value) == [("lines", "must contain at least 1 item(s)")]


def test_a_declared_error_carries_its_error_info(orders):
    stub, _ = orders
    with pytest.raises(grpc.RpcError) as caught:
        stub.Get(orders_v1_pb2.GetOrder(id="o-9"), timeout=10)
    err = caught.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "ORDER_NOT_FOUND", "orders.example.com", {"order_id": "o-9"}
    )


def test_replies_are_validated_when_asked(start_server, tmp_path):
    from support.env import ROOT, service_settings

    good = orders_v1_pb2.CreateOrder(customer="broken-reply", lines=[orders_v1_pb2.Line(sku="a", quantity=1)])
    # By default a reply is not checked: the one breaking Order's rule goes out.
    server = start_server(settings="orders.settings")
    with grpc.insecure_channel(server.address) as channel:
        assert orders_v1_pb2_grpc.OrdersStub(channel).Create(good, timeout=10).lines == -1
    settings = service_settings(
        tmp_path, "strict_orders", "orders", {"REGISTER": False},
        ROOT_ROUTER="orders.app.router", VALIDATION={"RESPONSES": True},
    )
    strict = start_server(settings=settings, env={"PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'tests'}"})
    with grpc.insecure_channel(strict.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            orders_v1_pb2_grpc.OrdersStub(channel).Create(good, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    from support.polling import wait_until

    wait_until(lambda: "answered an invalid Order" in strict.output, 5, "the invalid reply logged")
    assert "lines: must be greater than or equal to 0 [int32.gte]" in strict.output


def test_methods_without_rules_are_left_out_of_the_chain():
    from microframe.core.middleware import build_chain
    from microframe.core.router import load_routes

    routes = {route.method: route for route in load_routes("orders.app.router")}
    path = "microframe.contrib.validation.middleware.ValidationMiddleware"

    async def terminal(ctx, request):
        return request

    _, used = build_chain(routes["Create"], terminal, [path])
    assert used == [path]
    _, used = build_chain(routes["Get"], terminal, [path])
    assert used == []
