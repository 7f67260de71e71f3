#!/usr/bin/env python
"""Profile one benchmark configuration under the benchmark's h2load load with py-spy.

    python bench/profile.py                    # the example service, default settings (c)
    python bench/profile.py --config a         # the bare grpc.aio baseline, for comparison
    python bench/profile.py --native -o /tmp/c.txt

It starts the server as ``bench/run.py`` does, loads it with the same h2load command, records
py-spy samples of the process serving the calls (``--format raw``: collapsed stacks, one line
per distinct stack), and prints where the event loop thread spends its time: per function,
inclusive (the function and what it calls) and own (the sample's innermost Python frame), in
percent of that thread's samples. Frames of grpc's compiled core and of uvloop show up as the
Python frame that called into them.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import BenchError
from harness.checks import verify_grpc
from harness.load import h2load, request_body
from harness.servers import configurations, running, write_helper_settings


def load_in_background(
    port: int, body: Path, frame: int, opts: argparse.Namespace
) -> threading.Thread:
    def target() -> None:
        try:
            h2load(port, body, frame, f"{opts.duration + 2}s", opts.clients, opts.streams, None)
        except BenchError as err:
            print(f"h2load: {err}", file=sys.stderr)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def summarize(raw: Path, top: int) -> str:
    main_total = 0
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    other_threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if " (" in f and ".so" not in f and ".c:" not in f]
        if not any("Runner.run" in f or "run_until_complete" in f for f in frames):
            other_threads += n
            continue
        main_total += n
        # Only Python frames below the event loop's run(): what the loop runs.
        names = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" for f in frames]
        try:
            cut = max(
                i for i, f in enumerate(names) if f.startswith(("Runner.run", "run_until_complete"))
            )
        except ValueError:
            cut = -1
        below = names[cut + 1 :]
        own[below[-1] if below else "(the loop itself: uvloop / grpc core, no Python frame)"] += n
        for name in set(below):
            inclusive[name] += n
    if not main_total:
        return "no sample of the event loop thread"
    lines = [
        f"event loop thread: {main_total} samples (other threads: {other_threads})",
        "",
        "inclusive %  function (file)",
    ]
    for name, n in inclusive.most_common(top):
        lines.append(f"{100 * n / main_total:10.1f}  {name}")
    lines += ["", "      own %  function (file)"]
    for name, n in own.most_common(top):
        lines.append(f"{100 * n / main_total:10.1f}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="c", help="a, b, ca, c (default c)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of samples (default 10)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("-c", "--clients", type=int, default=4)
    parser.add_argument("-m", "--streams", type=int, default=16)
    parser.add_argument("--settings", help="settings module for the example service")
    parser.add_argument("--runserver-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--native", action="store_true", help="also sample native frames")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("-o", "--output", type=Path, help="keep the raw collapsed stacks there")
    opts = parser.parse_args(argv)
    for tool in ("h2load", "py-spy"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing", file=sys.stderr)
            return 2
    configs = configurations(opts.settings, tuple(opts.runserver_arg))
    if opts.config not in configs or configs[opts.config].workers != 1:
        print(
            "--config must be one of the one-process configurations: a, b, ca, c", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="microframe-profile-") as tmp:
        workdir = Path(tmp)
        write_helper_settings(workdir, opts.settings)
        body, frame = request_body(workdir)
        raw = opts.output or workdir / "profile.txt"
        with running(configs[opts.config], workdir) as server:
            verify_grpc(server.port)
            loader = load_in_background(server.port, body, frame, opts)
            time.sleep(1.5)  # past the connection set-up
            args = [
                "py-spy",
                "record",
                "--pid",
                str(server.proc.pid),
                "--format",
                "raw",
                "-o",
                str(raw),
                "-d",
                str(opts.duration),
                "-r",
                str(opts.rate),
                "--nonblocking",
            ]
            if opts.native:
                args.append("--native")
            proc = subprocess.run(args, capture_output=True, text=True, timeout=opts.duration + 60)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return 1
            loader.join(timeout=opts.duration + 60)
        print(f"({opts.config}) {configs[opts.config].label}")
        print(summarize(raw, opts.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
