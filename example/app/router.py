"""Routes of the example service: every Greeter RPC bound to its controller."""

from microframe.core.router import rpc

from example.controller import greeter
from example.generate import hello_pb2

Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]

routes = [
    rpc(Greeter, "SayHello", greeter.say_hello),
    rpc(Greeter, "LotsOfReplies", greeter.lots_of_replies),
    rpc(Greeter, "LotsOfGreetings", greeter.lots_of_greetings),
    rpc(Greeter, "BidiHello", greeter.bidi_hello),
]
