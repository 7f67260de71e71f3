"""Controllers of the orders service."""

from __future__ import annotations

from orders.errors import OrderClosed, OrderNotFound
from orders.generate.orders_v1_pb2 import ImportSummary, Order


async def create(ctx, request):
    if request.customer == "broken-reply":
        return Order(id="o-1", customer=request.customer, lines=-1)  # breaks Order's rule
    return Order(id="o-1", customer=request.customer, lines=len(request.lines))


async def import_(ctx, requests):
    imported = 0
    async for _ in requests:
        imported += 1
    return ImportSummary(imported=imported)


async def get(ctx, request):
    if request.id == "closed":
        raise OrderClosed("order closed is closed", metadata={"order_id": request.id})
    if request.id != "o-1":
        raise OrderNotFound(f"no order {request.id!r}", metadata={"order_id": request.id})
    return Order(id="o-1", customer="ann", lines=1)


async def refund(ctx, request):
    return Order(id=request.order_id, customer="ann", lines=1)
