"""The colors' router on its own (microframe.client.colors): which instances a call of each
color may go to, and what it keeps. Real instances over the wire: tests/client/test_propagation.py."""

from __future__ import annotations

import pytest

from microframe.client.colors import ColorRouter
from microframe.core.exceptions import Unavailable
from microframe.core.propagation import log_token, steering
from microframe.discovery.instance import ServiceInstance


def instance(n: int, color: str | None = None) -> ServiceInstance:
    return ServiceInstance(name="b", id=f"i{n}", host="127.0.0.1", port=10000 + n,
                           metadata={"color": color} if color else {})


FLEET = (instance(1), instance(2), instance(3, "canary"), instance(4, "shadow"))


def test_each_color_goes_to_its_instances_and_uncolored_calls_never_to_a_colored_one() -> None:
    router = ColorRouter("b", strict=False)
    assert [i.id for i in router.route(FLEET, "canary")] == ["i3"]
    assert [i.id for i in router.route(FLEET, "shadow")] == ["i4"]
    assert [i.id for i in router.route(FLEET, None)] == ["i1", "i2"]


def test_a_color_no_instance_has_falls_back_to_the_uncolored_calls_own_list() -> None:
    router = ColorRouter("b", strict=False)
    # The same list object: the balancer keeps one view (turns, statistics) of those instances.
    assert router.route(FLEET, "blue") is router.route(FLEET, None)
    strict = ColorRouter("b", strict=True)
    with pytest.raises(Unavailable, match="no instance of 'b' has the color 'blue'"):
        strict.route(FLEET, "blue")
    assert [i.id for i in strict.route(FLEET, None)] == ["i1", "i2"]


def test_a_fleet_of_colors_only_takes_uncolored_calls_on_every_instance() -> None:
    blue_green = (instance(1, "blue"), instance(2, "green"))
    router = ColorRouter("b", strict=False)
    assert router.route(blue_green, None) is blue_green
    assert [i.id for i in router.route(blue_green, "green")] == ["i2"]


def test_the_colors_callers_send_do_not_grow_what_is_kept() -> None:
    """A hostile caller of a service sends a new x-md-global-color on every request: the
    service's client to its downstream keeps one list per color its instances have, not one
    per color it was asked for."""
    router = ColorRouter("b", strict=False)
    for n in range(10_000):
        router.route(FLEET, f"color-{n}")
    assert len(router._by_color) == 3  # canary, shadow and the uncolored ones


def test_a_new_set_of_instances_is_routed_anew() -> None:
    router = ColorRouter("b", strict=False)
    assert [i.id for i in router.route(FLEET, "canary")] == ["i3"]
    without_canary = FLEET[:2] + FLEET[3:]
    assert [i.id for i in router.route(without_canary, "canary")] == ["i1", "i2"]


def test_the_color_and_stress_mark_of_a_call() -> None:
    key = "x-md-global-stress"
    assert steering((), key) == (None, False)
    assert steering((("x-md-global-color", "a"), ("x-md-global-color", "b")), key) == ("b", False)
    assert steering((("x-md-global-color", ""), (key, "1")), key) == (None, True)
    for off in ("", "0", "false", "No", "off"):
        assert steering(((key, off),), key) == (None, False)
    assert steering((("x-md-global-loadtest", "yes"),), "x-md-global-loadtest") == (None, True)


def test_a_callers_value_cannot_forge_fields_of_a_log_line() -> None:
    assert log_token("canary-2.b_1") == "canary-2.b_1"
    assert log_token('x peer=1.2.3.4 "') == '"x peer=1.2.3.4 \\""'
    assert len(log_token("a" * 10_000)) < 300
