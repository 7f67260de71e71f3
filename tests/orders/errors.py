"""The errors the orders service declares: raised by its controllers, raised again by the
microframe client of a caller that imports them."""

from microframe import NotFound
from microframe.core.exceptions import FailedPrecondition


class OrderNotFound(NotFound):
    """No order has that id."""

    reason = "ORDER_NOT_FOUND"
    domain = "orders.example.com"


class OrderClosed(FailedPrecondition):
    """The order can no longer change."""

    reason = "ORDER_CLOSED"
    domain = "orders.example.com"
