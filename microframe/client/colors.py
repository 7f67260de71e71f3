"""Colored traffic: the calls of a color go to the instances of that color.

An instance says its color in its registry metadata (``REGISTRY["METADATA"] = {"color":
"canary"}``). A call carrying ``x-md-global-color: canary`` (set by its caller, and travelling
with every call the request makes: :mod:`microframe.core.propagation`) is balanced over the
instances of that color only; when none is up it falls back to the uncolored ones (to all when
every instance has a color), or, when the client's ``COLOR_STRICT`` option is on, is refused
with UNAVAILABLE. A call without a color goes to the uncolored instances only (to all when
every instance has a color: a blue/green fleet), so that no uncolored call ever reaches a
canary. A load test's call (``PROPAGATION["STRESS_KEY"]``) without a color is routed as a call
of ``PROPAGATION["STRESS_COLOR"]`` when that is set: to the shadow instances.

The subsets are worked out once per set of instances the client sees (discovery hands the same
list until it changes), so a call pays a lookup; a fleet with no color and a call with none
pay one scan of the call's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

from microframe.core.exceptions import Unavailable
from microframe.core.propagation import COLOR_KEY
from microframe.discovery.instance import ServiceInstance

__all__ = ["COLOR", "COLOR_KEY", "ColorRouter"]

#: The instance metadata key a call's color (:data:`COLOR_KEY`) is matched to.
COLOR = "color"


class ColorRouter:
    """The instances of each color in the sets of one client's service, worked out once per
    set: one list per color the instances have, and one of the uncolored ones, the same list
    for every call of its subset (the balancers keep one view of each: their turns, p2c's
    picks). A color no instance has gets no entry of its own (it falls back, or is refused),
    so the colors callers send cannot grow what is kept."""

    def __init__(self, service: str, strict: bool) -> None:
        self.service = service
        self.strict = strict
        self._seen: Sequence[ServiceInstance] | None = None
        self._by_color: dict[str | None, Sequence[ServiceInstance]] = {}
        self._colored = False

    def _learn(self, instances: Sequence[ServiceInstance]) -> None:
        by_color: dict[str | None, list[ServiceInstance]] = {}
        plain: list[ServiceInstance] = []
        for instance in instances:
            color = instance.metadata.get(COLOR)
            if color:
                by_color.setdefault(color, []).append(instance)
            else:
                plain.append(instance)
        self._colored = bool(by_color)
        self._by_color = {**by_color, None: plain or instances}
        self._seen = instances

    def route(
        self, instances: Sequence[ServiceInstance], color: str | None
    ) -> Sequence[ServiceInstance]:
        """The instances a call of ``color`` may go to (see the module docstring)."""
        if instances is not self._seen:
            self._learn(instances)
        if not self._colored:
            if color is not None and self.strict:
                raise Unavailable(f"no instance of {self.service!r} has the color {color!r}")
            return instances
        found = self._by_color.get(color)
        if found is None:  # a color no instance has
            if self.strict:
                raise Unavailable(f"no instance of {self.service!r} has the color {color!r}")
            found = self._by_color[None]
        return found
