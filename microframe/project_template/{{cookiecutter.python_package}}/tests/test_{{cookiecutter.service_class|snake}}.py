"""The {{ cookiecutter.service_class }} RPCs, called over gRPC on the service's own server."""

import pytest

from microframe import Unimplemented
from microframe.test import serve

from {{ cookiecutter.python_package }}.generate.{{ cookiecutter.python_package }}_client import {{ cookiecutter.service_class }}Client
from {{ cookiecutter.python_package }}.generate.{{ cookiecutter.python_package }}_pb2 import HelloReply, HelloRequest


async def test_say_hello() -> None:
    async with serve() as server:
        client = {{ cookiecutter.service_class }}Client("{{ cookiecutter.service_name }}", address=server.address)
        reply = await client.SayHello(HelloRequest(name="Ada"))
    assert reply.message == "Hello, Ada!"


async def test_say_hello_to_nobody() -> None:
    async with serve() as server:
        client = {{ cookiecutter.service_class }}Client("{{ cookiecutter.service_name }}", address=server.address)
        reply = await client.SayHello(HelloRequest())
    assert reply.message == "Hello, world!"


async def test_an_rpc_not_in_the_proto_is_unimplemented() -> None:
    async with serve() as server:
        client = {{ cookiecutter.service_class }}Client("{{ cookiecutter.service_name }}", address=server.address)
        with pytest.raises(Unimplemented):
            await client.client.unary("/{{ cookiecutter.proto_package }}.{{ cookiecutter.service_class }}/NoSuchRpc", HelloRequest(), HelloReply)
