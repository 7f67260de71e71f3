"""The call's color as a label of the gRPC metrics (``METRICS["COLORS"]``), read from the
``/metrics`` of real services: alpha relays every call to bravo, of which one instance is a
canary; the callers send colors of their choosing."""

from __future__ import annotations

import collections

import grpc
from client.test_client import _cache, _wait_instances
from prometheus_client.parser import text_string_to_metric_families

from example.generate import hello_pb2, hello_pb2_grpc
from support.polling import wait_until

SAY_HELLO = {"grpc_service": "helloworld.Greeter", "grpc_method": "SayHello"}


def handled(server, side: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``grpc_<side>_handled_total`` of SayHello by color label, the series above 0 (each
    label's series is there from the start, at 0)."""
    found: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == f"grpc_{side}_handled_total" and all(
                labels.get(k) == v for k, v in SAY_HELLO.items()
            ):
                found[labels.get("color", "<no label>")] += sample.value
    return {label: count for label, count in found.items() if count}


async def test_the_calls_colors_label_the_metrics_only_the_listed_ones_apart(fleet):
    colors = {"METRICS": {"COLORS": ["canary"]}}
    fleet("bravo", extra=colors)
    canary = fleet("bravo", metadata={"color": "canary"}, extra=colors)[0]
    alpha = fleet("alpha", extra=colors)[0]
    cache = _cache(fleet)
    await _wait_instances(cache, "bravo", 2)
    await cache.close()
    async with grpc.aio.insecure_channel(alpha.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        sent = [(("x-md-global-color", "canary"),)] * 5 + [()] * 4 + [
            (("x-md-global-color", f"made-up-{n}"),) for n in range(300)  # a hostile caller's
        ]
        for metadata in sent:
            await stub.SayHello(hello_pb2.HelloRequest(name="relay:bravo=>pid"),
                                metadata=metadata, timeout=10)
    expected = {"canary": 5, "": 4, "other": 300}
    # Served by alpha, and called by alpha's client: one series per listed color, "other" and
    # "" (no color), whatever the callers sent.
    wait_until(lambda: handled(alpha, "server") == expected, 5, "alpha's server metrics")
    assert handled(alpha, "client") == expected
    # The canary served the canary's calls only.
    assert handled(canary, "server") == {"canary": 5}


def test_without_colors_the_metrics_have_no_color_label(fleet):
    server = fleet("plain")[0]
    with grpc.insecure_channel(server.address) as channel:
        hello_pb2_grpc.GreeterStub(channel).SayHello(
            hello_pb2.HelloRequest(name="x"), metadata=(("x-md-global-color", "canary"),),
            timeout=10)
    wait_until(lambda: handled(server, "server") == {"<no label>": 1}, 5, "SayHello counted")
