"""Routes of the test service: the example proto, controllers that misbehave on request."""

from microframe.core.router import rpc

from example.generate import hello_pb2
from testservice import controllers

Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]

routes = [
    rpc(Greeter, "SayHello", controllers.say_hello),
    rpc(Greeter, "LotsOfReplies", controllers.lots_of_replies),
    rpc(Greeter, "LotsOfGreetings", controllers.lots_of_greetings),
    rpc(Greeter, "BidiHello", controllers.bidi_hello),
]
