"""Metadata that travels down a chain of real services: alpha -> beta -> gamma, each a
``runserver`` process calling the next with microframe's client; the first call is made with
a plain grpc client, as any caller of alpha makes it."""

from __future__ import annotations

import grpc
from client.test_client import _cache, _wait_instances

from microframe.discovery.cache import DiscoveryCache

from example.generate import hello_pb2, hello_pb2_grpc
from support.polling import wait_until


async def chain(fleet) -> tuple[str, DiscoveryCache]:
    alpha = fleet("alpha")[0]
    fleet("beta")
    fleet("gamma")
    cache = _cache(fleet)
    for name in ("alpha", "beta", "gamma"):
        await _wait_instances(cache, name, 1)
    return alpha.address, cache


async def ask(address: str, final: str, metadata: tuple[tuple[str, str], ...]) -> str:
    """What gamma's controller answers ``final`` when alpha is called with ``metadata``."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await hello_pb2_grpc.GreeterStub(channel).SayHello(
            hello_pb2.HelloRequest(name=f"relay:beta,gamma=>{final}"), metadata=metadata,
            timeout=10,
        )
    return str(reply.message)


async def test_global_keys_reach_the_end_of_the_chain_local_ones_one_hop(fleet):
    address, cache = await chain(fleet)
    sent = (("x-md-global-tenant", "acme"), ("x-md-local-note", "for alpha only"),
            ("x-plain", "not propagated"))
    assert await ask(address, "metadata:x-md-global-tenant", sent) == "'acme'"
    assert await ask(address, "metadata:x-md-local-note", sent) == "None"
    assert await ask(address, "metadata:x-plain", sent) == "None"
    # beta's controller put x-md-local-caller in ctx.metadata_out: gamma sees beta, not alpha.
    assert await ask(address, "metadata:x-md-local-caller", sent) == "'beta'"
    await cache.close()


async def test_a_caller_cannot_inflate_every_downstream_call(fleet):
    address, cache = await chain(fleet)
    many = tuple((f"x-md-global-k{i:02d}", "v") for i in range(40))
    assert await ask(address, "metadata:x-md-global-k15", many) == "'v'"  # the 16th passes
    assert await ask(address, "metadata:x-md-global-k16", many) == "None"  # MAX_KEYS = 16
    big = tuple((f"x-md-global-big{i}", "b" * 2000) for i in range(3))
    assert await ask(address, "metadata:x-md-global-big1", big) == repr("b" * 2000)
    assert await ask(address, "metadata:x-md-global-big2", big) == "None"  # MAX_BYTES = 4096
    await cache.close()


async def _pids(client, calls: int, metadata=()) -> set[str]:
    return {(await client.SayHello(hello_pb2.HelloRequest(name="pid"), metadata=metadata)).message
            for _ in range(calls)}


async def test_colored_calls_reach_the_canary_only_and_fall_back_when_it_is_gone(fleet):
    from microframe.core.exceptions import Unavailable

    from example.generate.hello_client import GreeterClient

    plain = fleet("bravo")[0]
    canary = fleet("bravo", metadata={"color": "canary"})[0]
    cache = _cache(fleet)
    await _wait_instances(cache, "bravo", 2)
    client = GreeterClient("bravo", discovery=cache, balancer="round_robin")
    colored = (("x-md-global-color", "canary"),)
    assert await _pids(client, 20, colored) == {str(canary.proc.pid)}
    assert await _pids(client, 20) == {str(plain.proc.pid)}
    # From a chain: alpha's caller colors the request; alpha's call to bravo is colored too.
    alpha = fleet("alpha")[0]
    await _wait_instances(cache, "alpha", 1)
    async with grpc.aio.insecure_channel(alpha.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        for expected, metadata in ((canary, colored), (plain, ())):
            replies = {(await stub.SayHello(hello_pb2.HelloRequest(name="relay:bravo=>pid"),
                                            metadata=metadata, timeout=10)).message
                       for _ in range(10)}
            assert replies == {str(expected.proc.pid)}
    # The canary stopped: colored calls go to the others, unless the client is strict.
    canary.terminate()
    await _wait_instances(cache, "bravo", 1)
    assert await _pids(client, 10, colored) == {str(plain.proc.pid)}
    strict = GreeterClient("bravo", discovery=cache, color_strict=True)
    try:
        await strict.SayHello(hello_pb2.HelloRequest(name="pid"), metadata=colored)
        raise AssertionError("a strict client sent a colored call to an uncolored instance")
    except Unavailable as err:
        assert "no instance of 'bravo' has the color 'canary'" in str(err)
    await cache.close()


async def test_load_test_traffic_is_marked_at_every_hop_and_goes_to_the_shadow_instances(fleet):
    """alpha's caller marks a request as a load test (x-md-global-stress); alpha's settings
    route such calls to bravo's shadow instance (PROPAGATION["STRESS_COLOR"]); both mark the
    call stress=1 in their access log, and bravo's controller knows it (ctx.stress)."""
    logged = {"ACCESS_LOG": {"ENABLED": True}}
    plain = fleet("bravo", extra=logged)[0]
    shadow = fleet("bravo", metadata={"color": "shadow"}, extra=logged)[0]
    alpha = fleet("alpha", extra={**logged, "PROPAGATION": {"STRESS_COLOR": "shadow"}})[0]
    cache = _cache(fleet)
    await _wait_instances(cache, "bravo", 2)
    stress = (("x-md-global-stress", "1"),)
    async with grpc.aio.insecure_channel(alpha.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)

        async def steered(metadata) -> set[str]:  # type: ignore[no-untyped-def]
            return {(await stub.SayHello(hello_pb2.HelloRequest(name="relay:bravo=>steering"),
                                         metadata=metadata, timeout=10)).message
                    for _ in range(10)}

        assert await steered(stress) == {f"{shadow.proc.pid} None True"}
        assert await steered(()) == {f"{plain.proc.pid} None False"}
        assert await steered((("x-md-global-stress", "0"),)) == {f"{plain.proc.pid} None False"}
        # A color given wins over STRESS_COLOR: a canary's load test, and here no canary is up.
        canary_stress = (("x-md-global-color", "canary"), *stress)
        assert await steered(canary_stress) == {f"{plain.proc.pid} canary True"}
    await cache.close()

    def access(server, calls: int) -> list[str]:  # type: ignore[no-untyped-def]
        """The access lines of ``server`` once it has written ``calls`` of them."""
        def lines() -> list[str]:
            return [line for line in server.output.splitlines() if "microframe.access" in line]

        wait_until(lambda: len(lines()) >= calls, 5, f"{calls} access lines")
        return lines()

    shadow_lines = access(shadow, 10)
    assert len(shadow_lines) == 10 and all(line.endswith(" stress=1") for line in shadow_lines)
    plain_lines = access(plain, 30)
    assert len([line for line in plain_lines if line.endswith(" color=canary stress=1")]) == 10
    assert len([line for line in plain_lines if "stress" not in line]) == 20
    alpha_lines = access(alpha, 40)
    assert len([line for line in alpha_lines if line.endswith(" stress=1")]) == 20
