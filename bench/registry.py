#!/usr/bin/env python
"""How fast the registry propagates: registration -> a watching client, SIGTERM -> gone.

For each backend (the file registry, and etcd when its binary and the etcd extra are here):

1. *register -> seen*: a watcher process follows a service with ``registry.watch``; this
   process registers an instance, notes when ``register`` returned, and the watcher notes when
   the new set reached it (both read ``time.monotonic()``, one clock for the whole machine);
   then the instance is deregistered and the watcher sees it go. ``--rounds`` times.
2. *SIGTERM -> gone*: a real ``manage.py runserver`` registers itself; once the watcher sees
   it, it gets SIGTERM, and the time until the watcher sees it leave is measured.

    python bench/registry.py                 # both backends, printed
    python bench/registry.py --write         # ... and written to docs/performance.md
    python bench/registry.py --backends file --rounds 50

Target (DESIGN §8): a new instance is seen by a watching client <= 100 ms (p99) after it
registers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import ROOT
from harness.report import write_block
from harness.servers import wait_for

BEGIN_MARK = "<!-- bench:registry:begin -->"
END_MARK = "<!-- bench:registry:end -->"
SERVICE = "benchsvc"

from microframe.test import free_port  # noqa: E402  (once harness put this checkout first)

WATCHER = r"""
import asyncio, json, sys, time
from microframe.discovery import build_registry
async def main():
    registry = build_registry(sys.argv[1], json.loads(sys.argv[2]))
    async for found in registry.watch(sys.argv[3]):
        now = time.monotonic()
        print(json.dumps({"t": now, "ids": sorted(i.id for i in found)}), flush=True)
asyncio.run(main())
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def etcd_server(workdir: Path) -> Iterator[list[str]]:
    """A one-member etcd on free loopback ports, in ``workdir``; its endpoints."""
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd is not installed (apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    data = Path(tempfile.mkdtemp(prefix="bench-etcd-", dir=shm))
    log = open(workdir / "etcd.log", "wb")
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        [binary, "--name", "bench", "--data-dir", str(data),
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"bench={peer_url}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{client_url}/health", timeout=1) as reply:
                return json.load(reply).get("health") == "true"
        except OSError:
            return False

    try:
        if not wait_for(healthy, 20, proc):
            raise SystemExit(f"etcd did not become healthy; see {workdir / 'etcd.log'}")
        yield [f"127.0.0.1:{client}"]
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


class Watcher:
    """A separate process printing every set of instances it sees, with its time."""

    def __init__(self, backend: str, options: dict[str, Any], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCHER, backend, json.dumps(options), SERVICE],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = self.next(20)
        if first is None:
            raise SystemExit("the watcher did not start")

    def next(self, timeout: float) -> dict[str, Any] | None:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def until(self, predicate: Any, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event is None:
                raise SystemExit("the watcher did not see the change in time")
            if predicate(event["ids"]):
                return float(event["t"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


async def register_rounds(
    backend: str, options: dict[str, Any], watcher: Watcher, rounds: int
) -> tuple[list[float], list[float]]:
    from microframe.discovery import ServiceInstance, build_registry

    registry = build_registry(backend, options)
    seen, gone = [], []
    try:
        for n in range(rounds):
            instance = ServiceInstance(
                id=f"bench-{n}", name=SERVICE, host="127.0.0.1", port=10000 + n
            )
            await registry.register(instance)
            returned = time.monotonic()
            seen.append(
                await asyncio.to_thread(watcher.until, lambda ids, i=instance.id: i in ids, 10)
                - returned
            )
            await registry.deregister(instance)
            returned = time.monotonic()
            gone.append(
                await asyncio.to_thread(watcher.until, lambda ids, i=instance.id: i not in ids, 10)
                - returned
            )
    finally:
        await registry.close()
    return seen, gone


def sigterm_rounds(
    backend: str,
    options: dict[str, Any],
    watcher: Watcher,
    rounds: int,
    env: dict[str, str],
    workdir: Path,
) -> list[float]:
    package = workdir / "benchsvc"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(
        "from example.settings import *\n"
        f"SERVICE_NAME = {SERVICE!r}\n"
        f"REGISTRY = {{'BACKEND': {backend!r}, 'OPTIONS': {options!r}}}\n"
        "METRICS = {'ENABLED': False}\n"
    )
    run_env = dict(env, PYTHONPATH=f"{workdir}{os.pathsep}{ROOT}")
    results = []
    for _ in range(rounds):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "runserver",
                f"127.0.0.1:{port}",
                "--noreload",
                "--settings",
                "benchsvc.settings",
            ],
            cwd=ROOT,
            env=run_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            watcher.until(lambda ids, p=port: f"127.0.0.1:{p}" in ids, 30)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results.append(
                watcher.until(lambda ids, p=port: f"127.0.0.1:{p}" not in ids, 30) - sent
            )
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return results


def ms(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1000:.1f} | {percentile(values, 99) * 1000:.1f} | "
        f"{max(values) * 1000:.1f}"
    )


def run(backends: list[str], rounds: int, stops: int) -> str:
    rows = []
    for name in backends:
        with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
            workdir = Path(tmp)
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            with contextlib.ExitStack() as stack:
                if name == "etcd":
                    endpoints = stack.enter_context(etcd_server(workdir))
                    backend = "microframe.contrib.registry.etcd.EtcdRegistry"
                    options: dict[str, Any] = {
                        "endpoints": endpoints,
                        "ttl": 10,
                        "prefix": "/bench/services",
                    }
                else:
                    backend = "microframe.contrib.registry.file.FileRegistry"
                    options = {"directory": str(workdir / "registry"), "ttl": 10}
                watcher = Watcher(backend, options, env)
                stack.callback(watcher.close)
                seen, gone = asyncio.run(register_rounds(backend, options, watcher, rounds))
                stopped = sigterm_rounds(backend, options, watcher, stops, env, workdir)
            rows.append(f"| {name} | register -> seen | {len(seen)} | {ms(seen)} |")
            rows.append(f"| {name} | deregister -> gone | {len(gone)} | {ms(gone)} |")
            rows.append(f"| {name} | runserver SIGTERM -> gone | {len(stopped)} | {ms(stopped)} |")
            print("\n".join(rows[-3:]), flush=True)
    header = (
        f"`python bench/registry.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs; "
        "the watcher is a separate process, times in ms):\n\n"
        "| backend | from -> to | samples | median | p99 | max |\n|---|---|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="file,etcd", help="comma-separated: file, etcd")
    parser.add_argument(
        "--rounds", type=int, default=200, help="registrations per backend (default 200)"
    )
    parser.add_argument(
        "--stops", type=int, default=10, help="runserver SIGTERMs per backend (default 10)"
    )
    parser.add_argument(
        "--write", action="store_true", help="write the table into docs/performance.md"
    )
    args = parser.parse_args()
    block = run([b.strip() for b in args.backends.split(",") if b.strip()], args.rounds, args.stops)
    print(block)
    if args.write:
        write_block(block, BEGIN_MARK, END_MARK)


if __name__ == "__main__":
    main()
