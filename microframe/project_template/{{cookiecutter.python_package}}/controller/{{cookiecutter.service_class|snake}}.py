"""The RPCs of {{ cookiecutter.proto_package }}.{{ cookiecutter.service_class }}: business code only.

app/router.py binds each RPC to the function of the same name in snake case. genproto appends
a stub here for every RPC added to the proto and never changes what is already written.
"""

from __future__ import annotations

from microframe.core.context import RequestContext

from {{ cookiecutter.python_package }}.generate.{{ cookiecutter.python_package }}_pb2 import HelloReply, HelloRequest


async def say_hello(ctx: RequestContext, request: HelloRequest) -> HelloReply:
    """Greet ``request.name``."""
    return HelloReply(message=f"Hello, {request.name or 'world'}!")
