#!/usr/bin/env python
"""What the validation middleware costs the example service, side by side with h2load.

The example's HelloRequest carries two rules (``delay_ms`` and ``count`` at most 60000 and
1000), both compiled checks (docs/topics/validation.md). One run measures, in interleaved
rounds (``bench/harness``, as ``bench/run.py``: same h2load load, same checks that every call
really succeeded and was counted):

    b      bare grpc.aio servicer, uvloop (the reference)
    nov    example service, default stack on grpc.aio, ValidationMiddleware taken out
    val    ... the default stack, ValidationMiddleware in
    nnov, nval   the same two on the native transport

Target: the validation middleware costs <= 5 % QPS, ``val`` against ``nov`` (and ``nval``
against ``nnov``).

    python bench/validation.py --quick      # a smoke run
    python bench/validation.py --write      # full run, written to docs/performance.md
"""

from __future__ import annotations

import sys

from harness.variants import main

WITHOUT = (
    "from microframe.conf import global_settings as _defaults\n"
    "MIDDLEWARE = [m for m in _defaults.MIDDLEWARE if not m.endswith('.ValidationMiddleware')]\n"
)
GRPC_AIO = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "grpc.aio"}\n'
NATIVE = 'GRPC = {**globals().get("GRPC", {}), "TRANSPORT": "native"}\n'
VARIANTS = {
    "nov": ("default stack without ValidationMiddleware", GRPC_AIO + WITHOUT),
    "val": ("default stack (ValidationMiddleware in)", GRPC_AIO),
    "nnov": ("default stack without ValidationMiddleware, native transport", NATIVE + WITHOUT),
    "nval": ("default stack (ValidationMiddleware in), native transport", NATIVE),
}

if __name__ == "__main__":
    sys.exit(
        main(
            doc=__doc__,
            script="validation.py",
            variants=VARIANTS,
            baseline="nov",
            targets=[("val", 0.05), ("nval", 0.05, "nnov")],
            begin_mark="<!-- bench:validation:begin -->",
            end_mark="<!-- bench:validation:end -->",
        )
    )
