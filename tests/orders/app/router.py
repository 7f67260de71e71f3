"""The routes of the orders service."""

from microframe.core.router import rpc

from orders.controller import orders
from orders.generate import orders_v1_pb2

Orders = orders_v1_pb2.DESCRIPTOR.services_by_name["Orders"]

routes = [
    rpc(Orders, "Create", orders.create),
    rpc(Orders, "Import", orders.import_),
    rpc(Orders, "Get", orders.get),
    rpc(Orders, "Refund", orders.refund),
]
