"""The benchmark harness: what ``bench/run.py`` and the other benchmark scripts share.

- ``sampling``: reading a process's CPU, memory, children and sockets from /proc, and the CPU
  used by other programs during a measurement;
- ``servers``: the configurations compared, starting a server and waiting until it answers,
  stopping it with bounded waits;
- ``checks``: checking that a server's answers are real gRPC successes (and counted);
- ``load``: the h2load run and the parsing of its figures;
- ``measure``: one measurement of a configuration, and the interleaved rounds;
- ``summary``: medians over the rounds and the ratios between configurations;
- ``report``: the tables, the machine's description, and writing a block of
  docs/performance.md;
- ``variants``: settings variants of the example measured side by side (bench/limiter.py,
  bench/observability.py).

Importing the package puts this checkout first on ``sys.path``, so that the scripts measure its
``microframe`` and ``example`` rather than an installed copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The checkout the benchmarks measure.
ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
#: Where the scripts' ``--write`` puts their results.
DOC = ROOT / "docs" / "performance.md"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchError(RuntimeError):
    """A configuration could not be measured (did not start, wrong answers, h2load failed)."""


__all__ = ["BENCH", "DOC", "ROOT", "BenchError"]
