"""Process life cycle: graceful stop under load, worker processes, autoreload."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from conftest import ROOT, base_env, free_port, wait_until
from example.generate import hello_pb2, hello_pb2_grpc

Req = hello_pb2.HelloRequest


def test_sigterm_under_load_loses_no_accepted_call(start_server):
    server = start_server(settings="testservice.settings")
    results: collections.Counter[str] = collections.Counter()
    slow_results: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)
            while not stop.is_set():
                try:
                    greeter.SayHello(Req(name="load"), timeout=10)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with lock:
                    results[code] += 1

    def slow_caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)
            try:
                slow_results.append(greeter.SayHello(Req(name="slow", delay_ms=1500), timeout=10).message)
            except grpc.RpcError as err:
                slow_results.append(err.code().name)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: results["OK"] > 50, 20, "calls to flow")
    slow = [threading.Thread(target=slow_caller) for _ in range(5)]
    for t in slow:
        t.start()
    time.sleep(0.3)  # let the slow calls reach their controller before the signal
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(20)
    stop.set()
    for t in threads + slow:
        t.join(20)
    assert code == 0, server.output
    # In-flight calls finished with their answer; callers afterwards were refused, not cancelled.
    assert slow_results == ["Hello, slow!"] * 5, slow_results
    assert set(results) <= {"OK", "UNAVAILABLE"}, results
    assert "stopping: draining" in server.output and "stopped" in server.output


def test_two_workers_serve_aggregate_metrics_and_restart(start_server):
    server = start_server(settings="testservice.settings", workers=2)

    def pids_seen(calls: int = 60) -> set[str]:
        seen = set()
        for _ in range(calls):
            # A new channel per call: SO_REUSEPORT spreads connections, not calls.
            with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                seen.add(hello_pb2_grpc.GreeterStub(ch).SayHello(Req(name="pid"), timeout=5).message)
        return seen

    def both_pids() -> set[str] | None:
        seen = pids_seen()
        return seen if len(seen) == 2 else None

    pids = wait_until(both_pids, 30, "both workers to answer")
    assert str(server.proc.pid) not in pids

    text = server.metrics_text()
    handled = sum(
        float(m.group(1))
        for m in re.finditer(
            r'^grpc_server_handled_total\{[^}]*grpc_code="OK"[^}]*grpc_method="SayHello"[^}]*\} (\S+)$', text, re.M
        )
    )
    assert handled >= 120, text
    assert 'env="test"' in text

    victim = int(sorted(pids)[0])
    os.kill(victim, signal.SIGKILL)
    def replaced() -> bool:
        seen = pids_seen(20)
        return len(seen) == 2 and str(victim) not in seen

    wait_until(replaced, 30, "a replacement worker")
    assert "restarting" in server.output
    assert server.terminate() == 0, server.output
    for pid in pids - {str(victim)}:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_autoreload_restarts_on_code_change(tmp_path):
    pkg = tmp_path / "reloadsvc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(
        "from testservice.settings import *\n"
        "DEBUG = True\n"
        "GREETING = 'first'\n"
    )
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{port}",
         "--metrics-port", str(metrics_port), "--settings", "reloadsvc.settings"],
        cwd=ROOT, env=base_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def greeting() -> str | None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                return hello_pb2_grpc.GreeterStub(ch).SayHello(Req(name="setting"), timeout=2).message

        assert wait_until(greeting, 30, "the first server") == "first"
        (pkg / "settings.py").write_text(
            "from testservice.settings import *\nDEBUG = True\nGREETING = 'second'\n"
        )
        wait_until(lambda: greeting() == "second", 30, "the reloaded server")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_event_loop_setting(tmp_path, loop, start_server):
    pytest.importorskip("uvloop") if loop == "uvloop" else None
    pkg = tmp_path / f"loop_{loop}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(
        "from testservice.settings import *\n"
        f"GRPC = dict(GRPC, EVENT_LOOP={loop!r})\n"
        "ROOT_ROUTER = 'testservice.loop_router'\n"
    )
    server = start_server(settings=f"loop_{loop}.settings", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    with grpc.insecure_channel(server.address) as ch:
        assert hello_pb2_grpc.GreeterStub(ch).SayHello(Req(name="loop"), timeout=5).message == loop
