#!/usr/bin/env python
"""Draw docs/img/limiter.svg: calls admitted over time by each limiter for one bursty input.

The input and the limiters run on a simulated clock (the backends take a ``clock``), so the
figure is exact and the same on every machine. Every limiter allows 100 calls per second
(``TokenBucket(100, burst=50)``, ``LeakyBucket(100)``, ``FixedWindowCounter(100, 1)``,
``SlidingWindow(100, 1)``); the input is 60 calls per second with two bursts at 400. The SVG is
written by hand (a few polylines) to keep the docs free of a plotting dependency.

    python bench/limiter_plot.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from microframe.contrib.limiter.backends import (  # noqa: E402
    FixedWindowCounter,
    LeakyBucket,
    SlidingWindow,
    TokenBucket,
)

SECONDS, TICK, BIN = 4.0, 0.001, 0.1


def offered_rate(t: float) -> float:
    return 400.0 if 0.8 <= t < 1.3 or 2.6 <= t < 2.9 else 60.0


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate(make) -> tuple[list[float], list[float]]:
    clock = Clock()
    limiter = make(clock)
    bins = int(SECONDS / BIN)
    offered, admitted = [0.0] * bins, [0.0] * bins
    owed = 0.0
    for step in range(int(SECONDS / TICK)):
        t = step * TICK
        clock.now = 100.0 + t
        owed += offered_rate(t) * TICK
        while owed >= 1.0:
            owed -= 1.0
            b = min(bins - 1, int(t / BIN))
            offered[b] += 1 / BIN
            if limiter.try_acquire() == 0.0:
                admitted[b] += 1 / BIN
    return offered, admitted


LINES = [
    ("TokenBucket(100, burst=50)", lambda c: TokenBucket(100, 50, clock=c), "#1f77b4"),
    ("LeakyBucket(100)", lambda c: LeakyBucket(100, clock=c), "#2ca02c"),
    ("FixedWindowCounter(100, 1 s)", lambda c: FixedWindowCounter(100, 1.0, clock=c), "#d62728"),
    ("SlidingWindow(100, 1 s)", lambda c: SlidingWindow(100, 1.0, clock=c), "#9467bd"),
]


def svg() -> str:
    width, height, left, bottom, top, right = 760, 380, 60, 40, 20, 230
    plot_w, plot_h = width - left - right, height - top - bottom
    series = [(name, simulate(make), color) for name, make, color in LINES]
    offered = series[0][1][0]
    top_value = 450.0

    def point(i: int, value: float) -> str:
        x = left + (i + 0.5) * plot_w / len(offered)
        y = top + plot_h - value / top_value * plot_h
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for value in range(0, 451, 100):
        y = top + plot_h - value / top_value * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for second in range(int(SECONDS) + 1):
        x = left + second / SECONDS * plot_w
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{second} s</text>'
        )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        'text-anchor="middle">calls per second (100 ms bins)</text>'
    )
    points = " ".join(point(i, v) for i, v in enumerate(offered))
    parts.append(
        f'<polyline points="{points}" fill="none" stroke="#999" stroke-dasharray="4 3" '
        'stroke-width="1.5"/>'
    )
    legend = [("offered", "#999", "4 3")] + [(name, color, "") for name, _, color in series]
    for _, (_, admitted), color in series:
        points = " ".join(point(i, v) for i, v in enumerate(admitted))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    for n, (name, color, dash) in enumerate(legend):
        y = top + 14 + n * 20
        x = left + plot_w + 16
        parts.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 24}" y2="{y - 4}" stroke="{color}" '
            'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>"
        )
        parts.append(f'<text x="{x + 30}" y="{y}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    out = ROOT / "docs" / "img" / "limiter.svg"
    out.write_text(svg(), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
