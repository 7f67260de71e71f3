"""Process life cycle: graceful stop under load, worker processes, autoreload."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from microframe.test.ports import free_port

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env
from support.polling import wait_until

Req = hello_pb2.HelloRequest


def test_sigterm_under_load_cancels_no_call_of_plain_clients(start_server):
    """The example on its default settings, 8 plain grpc clients (no health watching, no
    retries of their own) calling SayHello as fast as they can, then SIGTERM: every call is
    answered OK, or refused UNAVAILABLE before the application accepted it; none is CANCELLED,
    and every OK was counted by the server as accepted."""
    server = start_server()
    results: collections.Counter[str] = collections.Counter()
    details: collections.Counter[str] = collections.Counter()
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
                        details[f"{code}: {err.details()}"] += 1
                with lock:
                    results[code] += 1
                if code != "OK":
                    stop.wait(0.01)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: results["OK"] > 200, 20, "calls to flow")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(20)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert code == 0, server.output
    assert set(results) <= {"OK", "UNAVAILABLE"}, (results, details)
    match = re.search(r"stopped: (\d+) call\(s\) accepted, all completed", server.output)
    assert match, server.output
    assert int(match.group(1)) == results["OK"], (match.group(0), results)


@pytest.mark.parametrize(
    ("replies", "expected"), [(10, "OK"), (60, "UNAVAILABLE")], ids=["within", "past"]
)
def test_server_streams_finish_within_grace(fleet, replies, expected):
    """Server streams running at SIGTERM, GRACE 3 s, a reply every 100 ms: streams that end
    within GRACE send every reply and end OK; longer ones are cut just before GRACE ends,
    UNAVAILABLE and marked handled, and the process is gone soon after GRACE."""
    (server,) = fleet("streams", 1, grpc={"GRACE": 3.0})
    outcomes: list[tuple[str, int, str | None]] = []
    first = threading.Barrier(4, timeout=10)

    def stream() -> None:
        with grpc.insecure_channel(server.address) as channel:
            replies_seen = 0
            call = hello_pb2_grpc.GreeterStub(channel).LotsOfReplies(
                Req(name="s", count=replies, delay_ms=100), timeout=20
            )
            try:
                for _ in call:
                    replies_seen += 1
                    if replies_seen == 1:
                        first.wait()
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            handled = dict(call.trailing_metadata() or ()).get("x-microframe-handled")
            outcomes.append((code, replies_seen, handled))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    first.wait()  # every stream has its first reply: running
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.output
    stopped_in = time.monotonic() - started
    for t in threads:
        t.join(10)
    codes = {code for code, _, _ in outcomes}
    assert len(outcomes) == 3 and codes == {expected}, outcomes
    if expected == "OK":
        assert [n for _, n, _ in outcomes] == [replies] * 3, outcomes
        assert stopped_in < 3.0, stopped_in
    else:
        assert all(0 < n < replies and handled for _, n, handled in outcomes), outcomes
        assert 2.5 < stopped_in < 3.0 + 2.0, stopped_in


def test_sigterm_under_load_loses_no_accepted_call(start_server):
    server = start_server(settings="testservice.settings")
    results: collections.Counter[str] = collections.Counter()
    unexpected: list[str] = []
    slow_results: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    callers = 4

    def caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)
            while not stop.is_set():
                try:
                    greeter.SayHello(Req(name="load"), timeout=10)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                    if code not in ("UNAVAILABLE", "CANCELLED"):
                        unexpected.append(f"{code}: {err.details()}")
                with lock:
                    results[code] += 1

    def slow_caller() -> None:
        with grpc.insecure_channel(server.address) as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)
            try:
                slow_results.append(greeter.SayHello(Req(name="slow", delay_ms=1500), timeout=10).message)
            except grpc.RpcError as err:
                slow_results.append(err.code().name)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    wait_until(lambda: results["OK"] > 50, 20, "calls to flow")
    slow = [threading.Thread(target=slow_caller) for _ in range(5)]
    for t in slow:
        t.start()
    wait_until(lambda: server.output.count("sleeping 1500 ms") >= 5, 10, "the slow calls to reach their controller")
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(20)
    stop.set()
    for t in threads + slow:
        t.join(20)
    assert code == 0, server.output
    # In-flight calls finished with their answer.
    assert slow_results == ["Hello, slow!"] * 5, slow_results
    assert "stopping: draining" in server.output
    # Every call the server accepted (handed to the application) was answered OK: the server's
    # count of accepted calls equals the OKs the clients received. Callers after the stop are
    # refused UNAVAILABLE, none CANCELLED.
    match = re.search(r"stopped: (\d+) call\(s\) accepted, all completed", server.output)
    assert match, server.output
    assert int(match.group(1)) == results["OK"] + len(slow_results), (match.group(0), results)
    assert not unexpected, unexpected
    assert results["CANCELLED"] == 0, results


def test_a_second_signal_does_not_cut_the_drain(start_server):
    """CONTROL-C reaches every process of the group, and a supervisor forwards SIGTERM too."""
    server = start_server(settings="testservice.settings")
    answers: list[str] = []

    def slow_call() -> None:
        with grpc.insecure_channel(server.address) as channel:
            try:
                answers.append(hello_pb2_grpc.GreeterStub(channel).SayHello(
                    Req(name="slow", delay_ms=1000), timeout=10).message)
            except grpc.RpcError as err:
                answers.append(err.code().name)

    caller = threading.Thread(target=slow_call)
    caller.start()
    wait_until(lambda: "sleeping 1000 ms" in server.output, 10, "the slow call to reach its controller")
    server.proc.send_signal(signal.SIGINT)
    wait_until(lambda: "stopping: draining" in server.output, 10, "the drain to begin")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0, server.output
    caller.join(10)
    assert answers == ["Hello, slow!"], (answers, server.output)
    assert "SIGTERM received while stopping" in server.output


def test_two_workers_serve_aggregate_metrics_and_restart(start_server):
    server = start_server(settings="testservice.settings", workers=2)

    made = [0]

    def pids_seen(calls: int = 60) -> set[str]:
        seen = set()
        for _ in range(calls):
            made[0] += 1
            # A new channel per call: SO_REUSEPORT spreads connections, not calls.
            with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                seen.add(hello_pb2_grpc.GreeterStub(ch).SayHello(Req(name="pid"), timeout=5).message)
        return seen

    def both_pids() -> set[str] | None:
        seen = pids_seen()
        return seen if len(seen) == 2 else None

    pids = wait_until(both_pids, 30, "both workers to answer")
    assert str(server.proc.pid) not in pids
    # The pool is registered once, by the supervisor.
    registry_dir = Path(base_env()["MICROFRAME_REGISTRY_DIR"]) / "testservice"
    entries = wait_until(lambda: list(registry_dir.glob(f"*:{server.port}.json")), 10, "the registration")
    assert len(entries) == 1
    assert json.loads(entries[0].read_text())["pid"] == server.proc.pid

    text = server.metrics_text()
    handled = sum(
        float(m.group(1))
        for m in re.finditer(
            r'^grpc_server_handled_total\{[^}]*grpc_code="OK"[^}]*grpc_method="SayHello"[^}]*\} (\S+)$', text, re.M
        )
    )
    # One endpoint counts the calls of both workers: exactly the calls made (all answered OK).
    assert handled == made[0], (handled, made[0], text)
    assert 'env="test"' in text

    victim = int(sorted(pids)[0])
    os.kill(victim, signal.SIGKILL)
    def replaced() -> bool:
        seen = pids_seen(20)
        return len(seen) == 2 and str(victim) not in seen

    wait_until(replaced, 30, "a replacement worker")
    wait_until(lambda: "restarting" in server.output, 5, "the supervisor's log line")
    assert server.terminate() == 0, server.output
    for pid in pids - {str(victim)}:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_workers_stop_when_the_supervisor_is_killed(start_server):
    """A supervisor killed with SIGKILL cannot pass the signal on: its workers must not linger."""
    server = start_server(settings="testservice.settings", workers=2)

    def worker_pids() -> set[int] | None:
        seen = set()
        for _ in range(40):
            with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                seen.add(int(hello_pb2_grpc.GreeterStub(ch).SayHello(Req(name="pid"), timeout=5).message))
        return seen if len(seen) == 2 else None

    pids = wait_until(worker_pids, 30, "both workers to answer")
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(5)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    wait_until(lambda: not any(alive(pid) for pid in pids), 20, "the orphaned workers to exit")


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
