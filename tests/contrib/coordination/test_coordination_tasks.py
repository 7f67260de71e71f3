"""The TASKS runner: in process (outcomes, skipped runs, leadership), and in real ``runserver``
processes against real etcd: a LEADER_ONLY task on one instance at a time, taken over within the
TTL when its instance is killed with SIGKILL; a task of every instance; the supervisor of
``--workers 2`` running them, its /metrics exporting their metrics."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY as PROMETHEUS

from microframe.contrib.coordination.election import Election
from microframe.contrib.coordination.tasks import Task, TaskRunner, load_tasks
from microframe.core.exceptions import ImproperlyConfigured
from microframe.test import override_settings

from support.env import ROOT, TESTS, service_settings
from support.etcd_cluster import EtcdCluster
from support.polling import wait_until
from support.servers import ServerProcess

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
TTL = 2


def runs(task: str, outcome: str) -> float:
    return PROMETHEUS.get_sample_value(
        "microframe_task_runs_total", {"task": task, "outcome": outcome}
    ) or 0.0


async def poll(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


# In process -------------------------------------------------------------------------------------

async def test_outcomes_and_skipped_runs():
    calls: list[str] = []
    release = asyncio.Event()

    async def slow() -> None:
        calls.append("slow")
        await release.wait()

    def fails() -> None:
        raise ValueError("broken on purpose")

    runner = TaskRunner([Task("unit-slow", slow, 0.05), Task("unit-fails", fails, 0.05),
                         Task("unit-ok", lambda: calls.append("ok"), 0.05)])
    before = {k: runs(*k) for k in [("unit-slow", "skipped"), ("unit-fails", "error"),
                                     ("unit-ok", "ok"), ("unit-slow", "ok")]}
    await runner.start()
    try:
        await poll(lambda: runs("unit-slow", "skipped") - before[("unit-slow", "skipped")] >= 2
                   and runs("unit-fails", "error") - before[("unit-fails", "error")] >= 2
                   and runs("unit-ok", "ok") - before[("unit-ok", "ok")] >= 2, 10, "runs")
        assert calls.count("slow") == 1  # never started twice
        release.set()
        await poll(lambda: runs("unit-slow", "ok") > before[("unit-slow", "ok")], 5, "slow's end")
    finally:
        await runner.stop()
    assert PROMETHEUS.get_sample_value("microframe_task_duration_seconds_count",
                                       {"task": "unit-fails"}) >= 2
    assert PROMETHEUS.get_sample_value("microframe_task_leader") == 0


async def test_leader_only_tasks_follow_leadership(etcd, prefix):
    count = 0

    async def job() -> None:
        nonlocal count
        count += 1

    with override_settings(COORDINATION={"OPTIONS": {"endpoints": etcd.endpoints},
                                         "PREFIX": prefix, "TTL": 2}):
        rival = Election("svc-tasks", "rival")
        await asyncio.wait_for(rival.campaign(), 10)  # leads first: the runner waits
        runner = TaskRunner([Task("unit-leader", job, 0.05, leader_only=True)],
                            election_name="svc-tasks", identity="me")
        await runner.start()
        try:
            deadline = time.monotonic() + 10
            while len(etcd.get_prefix(f"{prefix}/elections/svc-tasks/")) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert count == 0 and not runner.is_leader
            assert PROMETHEUS.get_sample_value("microframe_task_leader") == 0
            await rival.resign()
            await poll(lambda: count >= 3, 10, "runs once leading")
            assert PROMETHEUS.get_sample_value("microframe_task_leader") == 1
            lease = next(iter(etcd.get_prefix(f"{prefix}/elections/svc-tasks/").values())).lease
            etcd.etcdctl("lease", "revoke", format(lease, "x"))
            await poll(lambda: not runner.is_leader, 2 + 2, "leadership lost")
            stopped_at = count
            await asyncio.sleep(0.3)  # several EVERY periods: no run while not leading
            assert count == stopped_at or runner.is_leader
        finally:
            await runner.stop()
            await rival.resign()
        assert PROMETHEUS.get_sample_value("microframe_task_leader") == 0


def test_load_tasks_refuses_a_broken_entry():
    with pytest.raises(ImproperlyConfigured):
        load_tasks({"x": {"CALLABLE": "no.such.func", "EVERY": 1}})
    (task,) = load_tasks({"x": {"CALLABLE": "coord_tasks.leader_job", "EVERY": 1,
                                "LEADER_ONLY": True}})
    assert task.is_async and task.leader_only and task.every == 1.0


async def test_only_the_process_standing_for_the_instance_runs_them():
    from microframe.contrib.coordination import serving
    from microframe.core.serving import ServingProcess

    class Fake:  # what the receivers read of a Server or a Supervisor (weakly referenced)
        def __init__(self, process: ServingProcess | None) -> None:
            self.process, self.config, self.port = process, self, 1
            self.host = "127.0.0.1"

    server = Fake
    tasks = {"unit-roles": {"CALLABLE": "coord_tasks.failing_job", "EVERY": 60}}
    with override_settings(TASKS=tasks):
        for process in (None, ServingProcess("worker", "127.0.0.1", 1),
                        ServingProcess("supervisor", "127.0.0.1", 1)):
            lone = server(process)
            await serving.start_server_tasks(None, server=lone)
            assert lone not in serving._runners
        await serving.start_pool_tasks(None, pool=Fake(None))
        assert not serving._runners
        lone = server(ServingProcess("server", "127.0.0.1", 1))
        await serving.start_server_tasks(None, server=lone)
        assert lone in serving._runners
        await poll(lambda: runs("unit-roles", "error") >= 1, 5, "the first run")
        await serving.stop_tasks(None, server=lone)
        assert lone not in serving._runners


# Real runserver processes ---------------------------------------------------------------------

def _settings(tmp_path: Path, name: str, cluster: EtcdCluster, prefix: str) -> str:
    tasks = {
        "leader": {"CALLABLE": "coord_tasks.leader_job", "EVERY": 0.3, "LEADER_ONLY": True},
        "every": {"CALLABLE": "coord_tasks.every_job", "EVERY": 0.3},
        "failing": {"CALLABLE": "coord_tasks.failing_job", "EVERY": 0.5},
    }
    return service_settings(
        tmp_path, name, "coordsvc",
        {"BACKEND": "microframe.contrib.registry.file.FileRegistry",
         "OPTIONS": {"directory": str(tmp_path / "registry")}, "REGISTER": False},
        COORDINATION={"OPTIONS": {"endpoints": cluster.endpoints, "timeout": 1},
                      "PREFIX": prefix, "TTL": TTL},
        TASKS=tasks,
    )


def _server(tmp_path: Path, settings: str, workers: int = 1) -> ServerProcess:
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(TESTS), str(HERE)]),
        "COORD_LEADER_LOG": str(tmp_path / "leader.log"),
        "COORD_EVERY_LOG": str(tmp_path / "every.log"),
    }
    return ServerProcess(tmp_path, settings=settings, env=env, workers=workers,
                         transport="grpc.aio")


def _intervals(path: Path) -> list[tuple[int, float, float | None]]:
    """(pid, start, end or None) of each run written to the leader log."""
    started: dict[int, float] = {}
    found: list[tuple[int, float, float | None]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        pid, what, at = line.split()
        if what == "start":
            started[int(pid)] = float(at)
        else:
            found.append((int(pid), started.pop(int(pid)), float(at)))
    found += [(pid, at, None) for pid, at in started.items()]
    return sorted(found, key=lambda run: run[1])


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with ``labels`` (among others) in an exposition."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(value)
    return None


def test_a_leader_only_task_runs_on_one_instance_and_moves_when_it_dies(etcd, prefix, tmp_path):
    servers = [
        _server(tmp_path, _settings(tmp_path, f"coordsvc{i}", etcd, prefix)).wait_serving()
        for i in range(2)
    ]
    try:
        leader_log, every_log = tmp_path / "leader.log", tmp_path / "every.log"
        pids = {s.proc.pid for s in servers}
        # The task of every instance runs on both.
        wait_until(lambda: set(_pids(every_log)) == pids, 15, "every_job on both instances")
        # The LEADER_ONLY task runs on one of them only.
        wait_until(lambda: len([r for r in _intervals(leader_log) if r[2]]) >= 4, 15,
                   "four runs of leader_job")
        (leader_pid,) = {pid for pid, _, _ in _intervals(leader_log)}
        leader = next(s for s in servers if s.proc.pid == leader_pid)
        other = next(s for s in servers if s is not leader)
        text = other.metrics_text()
        assert (_sample(text, "microframe_task_runs_total", task="failing", outcome="error")
                or 0) >= 1, text
        assert _sample(text, "microframe_task_leader") == 0
        assert _sample(leader.metrics_text(), "microframe_task_leader") == 1
        other.wait_output("this task fails on purpose", "Traceback")

        leader.kill()
        killed = time.monotonic()
        wait_until(lambda: any(pid == other.proc.pid for pid, _, _ in _intervals(leader_log)),
                   TTL + 5, "the other instance to take the task over")
        first = min(at for pid, at, _ in _intervals(leader_log) if pid == other.proc.pid)
        took = first - killed
        print(f"LEADER_ONLY task taken over {took:.2f} s after SIGKILL of its instance (TTL {TTL} s)")
        assert took <= TTL + 1, f"taken over after {took:.2f} s"
        wait_until(lambda: len([r for r in _intervals(leader_log)
                                if r[0] == other.proc.pid and r[2]]) >= 2, 10, "runs after")
        # Never both at once: a run of the killed instance ends at the latest when it died.
        runs_ = [(pid, start, end if end is not None else killed)
                 for pid, start, end in _intervals(leader_log)]
        for i, (pid, start, end) in enumerate(runs_):
            for pid2, start2, _ in runs_[i + 1:]:
                if pid2 != pid:
                    assert start2 >= end, f"overlap: {pid} {start}-{end} and {pid2} {start2}"
        other.wait_output("leading coordsvc-tasks")
        assert _sample(other.metrics_text(), "microframe_task_leader") == 1
    finally:
        for server in servers:
            server.kill()


def test_the_supervisor_of_a_pool_runs_the_tasks(etcd, prefix, tmp_path):
    server = _server(tmp_path, _settings(tmp_path, "coordpool", etcd, prefix), workers=2)
    server.wait_serving(30)
    try:
        every_log = tmp_path / "every.log"
        wait_until(lambda: len(_pids(every_log)) >= 3, 15, "every_job runs")
        wait_until(lambda: len(_intervals(tmp_path / "leader.log")) >= 2, 15, "leader_job runs")
        # Only the supervisor (the process runserver is) runs them, never a worker.
        assert set(_pids(every_log)) == {server.proc.pid}
        assert {pid for pid, _, _ in _intervals(tmp_path / "leader.log")} == {server.proc.pid}
        text = server.metrics_text()
        assert (_sample(text, "microframe_task_runs_total", task="every", outcome="ok") or 0) >= 3
        assert (_sample(text, "microframe_task_runs_total", task="failing", outcome="error")
                or 0) >= 1
        assert _sample(text, "microframe_task_leader") == 1, text
        assert re.search(r"microframe_task_duration_seconds_count\{[^}]*task=\"every\"", text)
        assert server.terminate() == 0
    finally:
        server.kill()
