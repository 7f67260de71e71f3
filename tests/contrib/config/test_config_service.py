"""The configuration center seen from outside: real ``manage.py runserver`` instances of a
service configured from a real etcd, ``manage.py config`` as a user types it, and a plain grpc
client counting what the limiter admits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from contrib.config.support_config import (
    admitted,
    config_settings,
    env,
    limiter,
    manage_config,
    metric,
    put,
    start,
    stored_revision,
    wait_applied,
)

from support.env import ROOT
from support.etcd_cluster import EtcdCluster
from support.polling import wait_until

if not os.environ.get("CI"):
    pytest.importorskip("aetcd")

pytestmark = pytest.mark.timeout(120)

#: The issue's bound: a write applied by every instance within a second.
APPLY_WITHIN = 1.0


def test_a_limiter_written_with_config_set_is_applied_by_two_instances_within_a_second(
    etcd, prefix, tmp_path: Path
):
    settings = config_settings(tmp_path, "cfg_two", etcd.endpoints, prefix)
    servers = [start(tmp_path, settings), start(tmp_path, settings)]
    try:
        for server in servers:
            server.wait_serving()
        assert [admitted(s, 8) for s in servers] == [3, 3]
        for burst in (5, 7, 4):
            result = manage_config(tmp_path, settings, "set", "LIMITER", json.dumps(limiter(burst)))
            wait_applied(servers, stored_revision(result), timeout=5)
            assert [admitted(s, burst + 4) for s in servers] == [burst, burst]
        # From the write (an etcd client in this process) to both instances applying it.
        delays = [
            wait_applied(servers, put(etcd, prefix, "cfgsvc", "LIMITER", limiter(b)), 5)
            for b in (6, 9, 5, 8, 6, 7, 5, 9, 6, 8, 7, 5, 6, 9, 8, 5, 7, 6, 8, 9)
        ]
        delays.sort()
        print(f"write to applied by both: median {delays[10] * 1000:.0f} ms, "
              f"max {delays[-1] * 1000:.0f} ms")
        assert delays[-1] < APPLY_WITHIN, delays
        assert [admitted(s, 13) for s in servers] == [9, 9]
        for server in servers:
            assert metric(server, "microframe_config_applied_total", setting="LIMITER") == 23
    finally:
        for server in servers:
            server.terminate()


def test_a_value_failing_the_checks_is_refused_by_config_set_and_by_running_instances(
    etcd, prefix, tmp_path: Path
):
    settings = config_settings(tmp_path, "cfg_bad", etcd.endpoints, prefix)
    server = start(tmp_path, settings).wait_serving()
    try:
        bad = json.dumps({"MODE": "sometimes"})
        refused = manage_config(tmp_path, settings, "set", "LIMITER", bad)
        assert refused.returncode == 1
        assert "limiter.E001" in refused.stderr and "nothing stored" in refused.stderr
        assert "No settings stored" in manage_config(tmp_path, settings, "get").stdout
        # Written anyway (--force, or any etcd client): the instance refuses it too.
        revision = stored_revision(
            manage_config(tmp_path, settings, "set", "LIMITER", bad, "--force")
        )
        wait_applied([server], revision, timeout=5)
        assert metric(server, "microframe_config_rejected_total", setting="LIMITER",
                      check="limiter.E001") == 1
        assert admitted(server, 8) == 3  # the old limiter, at the old rate
        server.wait_output("LIMITER from the configuration center (revision",
                           "refused, the old value kept: limiter.E001")
        # A value a battery cannot build is refused as well: the chain keeps its limiter.
        unbuildable = {"BACKEND": "microframe.contrib.limiter.backends.NoSuchBucket"}
        revision = put(etcd, prefix, "cfgsvc", "LIMITER", unbuildable)
        wait_applied([server], revision, timeout=5)
        assert metric(server, "microframe_config_rejected_total", setting="LIMITER",
                      check="limiter.E002") == 1
        # Not JSON at all.
        etcd.etcdctl("put", f"{prefix}/cfgsvc/LIMITER", "{not json")
        wait_until(lambda: metric(server, "microframe_config_rejected_total",
                                  setting="LIMITER", check="config.invalid") == 1, 5,
                   "the invalid JSON refused")
        # JSON nested past what the parser, the checks and the redaction of secrets follow.
        etcd.etcdctl("put", f"{prefix}/cfgsvc/LIMITER",
                     '{"OPTIONS": ' * 1000 + "1" + "}" * 1000)
        wait_until(lambda: metric(server, "microframe_config_rejected_total",
                                  setting="LIMITER", check="config.invalid") == 2, 5,
                   "the value nested too deep refused")
        assert admitted(server, 4) == 0  # the three calls admitted above took the burst
        # A good value after the bad ones is applied.
        revision = put(etcd, prefix, "cfgsvc", "LIMITER", limiter(6))
        wait_applied([server], revision, timeout=5)
        assert admitted(server, 8) == 6
        assert "Traceback" not in server.output
        assert metric(server, "microframe_config_up") == 1
    finally:
        server.terminate()


def test_a_change_needing_a_restart_is_not_applied_but_exported_and_shown_by_check(
    etcd, prefix, tmp_path: Path
):
    settings = config_settings(tmp_path, "cfg_restart", etcd.endpoints, prefix)
    server = start(tmp_path, settings).wait_serving()
    try:
        result = manage_config(tmp_path, settings, "set", "GRPC", '{"MAX_CONCURRENT_RPCS": 7}')
        assert "not reloaded" in result.stderr
        wait_applied([server], stored_revision(result), timeout=5)
        assert metric(server, "microframe_config_restart_required", setting="GRPC") == 1
        server.wait_output("GRPC changed in the configuration center")
        check = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "check", "--settings", settings],
            cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=60,
        )
        assert "config.W002" in check.stderr + check.stdout, check
        assert f"Process {server.proc.pid}" in check.stderr + check.stdout
        # The old value back: nothing waits for a restart any more.
        revision = stored_revision(manage_config(tmp_path, settings, "unset", "GRPC"))
        wait_applied([server], revision, timeout=5)
        assert metric(server, "microframe_config_restart_required", setting="GRPC") == 0
        # A live setting changed in a part that is not live (the log format) waits too.
        result = manage_config(tmp_path, settings, "set", "LOG", '{"FORMAT": "json"}')
        wait_applied([server], stored_revision(result), timeout=5)
        assert metric(server, "microframe_config_restart_required", setting="LOG") == 1
        server.wait_output("FORMAT cannot change while the service runs")
    finally:
        server.terminate()


def test_etcd_down_at_start_up_starts_from_the_cache_and_follows_again_when_it_is_back(
    make_cluster, prefix, tmp_path: Path
):
    own_etcd = make_cluster()
    settings = config_settings(tmp_path, "cfg_down", own_etcd.endpoints, prefix)
    put(own_etcd, prefix, "cfgsvc", "LIMITER", limiter(5))
    server = start(tmp_path, settings).wait_serving()
    assert admitted(server, 8) == 5
    assert server.terminate() == 0
    cache = tmp_path / "config-cache" / "cfgsvc.json"
    assert oct(cache.stat().st_mode & 0o777) == "0o600"

    member = own_etcd.members[0]
    member.stop()
    server = start(tmp_path, settings).wait_serving()
    try:
        server.wait_output("configuration center unreachable")
        assert admitted(server, 8) == 5  # the cached value
        assert metric(server, "microframe_config_up") == 0
        check = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "check", "--settings", settings],
            cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=60,
        )
        assert "config.W001" in check.stderr + check.stdout
        member.restart()
        revision = put(own_etcd, prefix, "cfgsvc", "LIMITER", limiter(7))
        wait_applied([server], revision, timeout=10)
        assert admitted(server, 10) == 7
        assert metric(server, "microframe_config_up") == 1
    finally:
        server.terminate()

    # No etcd and no cache: a clear error, and no server.
    member.stop()
    bare = config_settings(tmp_path, "cfg_nocache", own_etcd.endpoints, prefix,
                           service="nocache")
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runserver", "127.0.0.1:0", "--noreload",
         "--settings", bare],
        cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot read the settings of 'nocache'" in result.stderr
    assert "there is no cache of them" in result.stderr


def test_etcd_down_during_a_run_changes_nothing_and_crashes_nothing(
    make_cluster, prefix, tmp_path: Path
):
    own_etcd = make_cluster()
    settings = config_settings(tmp_path, "cfg_outage", own_etcd.endpoints, prefix)
    server = start(tmp_path, settings, workers=2).wait_serving()
    try:
        # One worker serving is not both: the other may have read the settings before the write
        # and not yet follow the center when it goes, and would rightly keep its older values.
        wait_until(lambda: len(re.findall(r"serving \d+ methods of .* \(pid \d+\)",
                                          server.output)) == 2, 30, "both workers to serve")
        revision = put(own_etcd, prefix, "cfgsvc", "LIMITER", limiter(1000))
        wait_applied([server], revision, timeout=5)  # the gauge's lowest worker: both
        member = own_etcd.members[0]
        member.stop()
        wait_until(lambda: metric(server, "microframe_config_up") == 0, 10,
                   "the workers to notice the outage")
        served = admitted(server, 50)
        assert served == 50
        assert server.proc.poll() is None
        member.restart()
        revision = put(own_etcd, prefix, "cfgsvc", "LIMITER", limiter(2))
        wait_applied([server], revision, timeout=10)
        assert metric(server, "microframe_config_applied_total", setting="LIMITER") == 4
        assert "Traceback" not in server.output
    finally:
        server.terminate()


def test_reloads_under_load_drop_no_call_in_flight(etcd, prefix, tmp_path: Path):
    import threading

    import grpc

    from example.generate import hello_pb2, hello_pb2_grpc

    settings = config_settings(tmp_path, "cfg_load", etcd.endpoints, prefix,
                               LIMITER={"OPTIONS": {"rate": 100000, "burst": 100000}})
    server = start(tmp_path, settings).wait_serving()
    failures: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def load() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = hello_pb2_grpc.GreeterStub(channel)
            while not done.is_set():
                try:
                    stub.SayHello(hello_pb2.HelloRequest(name="x", delay_ms=50), timeout=10)
                    calls[0] += 1
                except grpc.RpcError as err:
                    failures.append(err)

    threads = [threading.Thread(target=load) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for burst in range(100001, 100021):  # each a change (100000 is the local value)
            # Calls in flight at every reload: a few completed since the last one.
            seen = calls[0]
            wait_until(lambda seen=seen: calls[0] >= seen + 8, 10, "calls between reloads")
            revision = put(etcd, prefix, "cfgsvc", "LIMITER",
                           {"OPTIONS": {"rate": 100000, "burst": burst}})
            wait_applied([server], revision, timeout=5)
        done.set()
        for thread in threads:
            thread.join(20)
        assert not failures, failures[:3]
        assert calls[0] >= 160
        assert metric(server, "microframe_config_applied_total", setting="LIMITER") == 20
    finally:
        done.set()
        server.terminate()


def test_auth_tokens_and_the_access_log_follow_the_configuration_center(
    etcd, prefix, tmp_path: Path
):
    import grpc

    from example.generate import hello_pb2, hello_pb2_grpc

    settings = config_settings(tmp_path, "cfg_auth", etcd.endpoints, prefix,
                               AUTH={"ENABLED": True, "TOKENS": {"alice": "first-token"}})
    server = start(tmp_path, settings).wait_serving()

    def code(token: str) -> grpc.StatusCode:
        with grpc.insecure_channel(server.address) as channel:
            try:
                hello_pb2_grpc.GreeterStub(channel).SayHello(
                    hello_pb2.HelloRequest(name="auth-check"), timeout=5,
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    try:
        assert code("first-token") == grpc.StatusCode.OK
        result = manage_config(tmp_path, settings, "set", "AUTH",
                               '{"TOKENS": {"alice": "second-token"}}')
        wait_applied([server], stored_revision(result), timeout=5)
        assert code("first-token") == grpc.StatusCode.UNAUTHENTICATED
        assert code("second-token") == grpc.StatusCode.OK
        assert "second-token" not in manage_config(tmp_path, settings, "get", "AUTH").stdout
        assert "auth-check" not in server.output.split("AUTH applied")[-1]
        result = manage_config(tmp_path, settings, "set", "ACCESS_LOG", '{"ENABLED": true}')
        wait_applied([server], stored_revision(result), timeout=5)
        assert code("second-token") == grpc.StatusCode.OK
        wait_until(lambda: "/helloworld.Greeter/SayHello" in
                   server.output.split("ACCESS_LOG applied")[-1], 5, "an access log line")
        result = manage_config(tmp_path, settings, "set", "LOG", '{"LEVEL": "DEBUG"}')
        wait_applied([server], stored_revision(result), timeout=5)
        revision = put(etcd, prefix, "cfgsvc", "LIMITER", limiter(50))
        wait_applied([server], revision, timeout=5)
        wait_until(lambda: "middleware chains of 4 methods rebuilt" in server.output, 5,
                   "a DEBUG line once LOG's level is DEBUG")
    finally:
        server.terminate()


def test_three_members_a_write_applied_within_a_second_and_a_member_killed(
    make_cluster, prefix, tmp_path: Path
):
    cluster = make_cluster(size=3)
    settings = config_settings(tmp_path, "cfg_three", cluster.endpoints, prefix)
    servers = [start(tmp_path, settings), start(tmp_path, settings)]
    try:
        for server in servers:
            server.wait_serving()
        delays = [
            wait_applied(servers, put(cluster, prefix, "cfgsvc", "LIMITER", limiter(b)), 5)
            for b in (4, 5, 6, 4, 5, 6, 4, 5, 6, 4)
        ]
        assert max(delays) < APPLY_WITHIN, delays
        # The member the clients dial first goes: they move to another and catch up.
        cluster.members[0].kill()
        # The killed member may have led: the write waits for an election (a bounded poll).
        revision = int(wait_until(
            lambda: put(_via(cluster, 1), prefix, "cfgsvc", "LIMITER", limiter(8)), 15,
            "a write to the remaining members",
        ))
        moved = wait_applied(servers, revision, timeout=15)
        print(f"3 members: write to applied max {max(delays) * 1000:.0f} ms; "
              f"after a member killed {moved:.2f} s")
        assert [admitted(s, 10) for s in servers] == [8, 8]
    finally:
        for server in servers:
            server.terminate()


class _via:
    """A cluster seen through one member (the others may be down)."""

    def __init__(self, cluster: EtcdCluster, index: int) -> None:
        self.endpoints = [cluster.members[index].endpoint]


def test_processes_recording_restarts_at_once_lose_none(tmp_path: Path):
    """Every serving process of a host records what it waits to restart for in one file: 8
    processes writing at once leave 8 entries, and ``check`` lists each one."""
    script = tmp_path / "record.py"
    script.write_text(
        "import os, sys, time\n"
        "from microframe.conf import settings\n"
        f"settings.configure(SERVICE_NAME='racer', CONFIG={{'CACHE_DIR': {str(tmp_path)!r}}})\n"
        "from microframe.contrib.config.reload import write_restart_file\n"
        "start = float(sys.argv[1])\n"
        "while time.time() < start: pass\n"
        "for revision in range(20):\n"
        "    write_restart_file('racer', {'GRPC': revision})\n"
        "sys.stdout.write('done'); sys.stdout.flush(); sys.stdin.read()\n"
    )
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, str(script), str(start)], env=env(tmp_path),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.read(4) == "done"
        recorded = json.loads((tmp_path / "racer.restart.json").read_text())
        assert sorted(recorded) == sorted(str(p.pid) for p in procs)
        assert all(entry == {"GRPC": 19} for entry in recorded.values())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_removing_a_key_that_was_never_a_setting_refuses_nothing(etcd, prefix, tmp_path: Path):
    settings = config_settings(tmp_path, "cfg_badkey", etcd.endpoints, prefix)
    server = start(tmp_path, settings).wait_serving()
    try:
        etcd.etcdctl("put", f"{prefix}/cfgsvc/SERVICE_NAME", '"payments"')
        wait_until(lambda: metric(server, "microframe_config_rejected_total",
                                  setting="SERVICE_NAME", check="config.invalid") == 1, 5,
                   "the forbidden key refused")
        etcd.etcdctl("del", f"{prefix}/cfgsvc/SERVICE_NAME")
        revision = put(etcd, prefix, "cfgsvc", "LIMITER", limiter(4))
        wait_applied([server], revision, timeout=5)  # the deletion came before, in order
        assert metric(server, "microframe_config_rejected_total", setting="SERVICE_NAME",
                      check="config.invalid") == 1
    finally:
        server.terminate()
