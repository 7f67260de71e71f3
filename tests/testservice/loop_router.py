"""A router whose SayHello answers the name of the event loop's class family."""

import asyncio

from microframe.core.router import rpc

from example.generate import hello_pb2

Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]


async def which_loop(ctx, request):
    module = type(asyncio.get_running_loop()).__module__
    return hello_pb2.HelloReply(message="uvloop" if module.startswith("uvloop") else "asyncio")


routes = [rpc(Greeter, "SayHello", which_loop)]
