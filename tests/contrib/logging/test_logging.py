"""The logging battery: the queue writer, formats, levels, rotation, and the access log of real
service processes read back from their log files."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import subprocess
import sys
import threading
import time

import grpc
import pytest

from microframe.contrib.logging import TRACE, trace
from microframe.contrib.logging.config import configure_logging, default_logging
from microframe.contrib.logging.formatters import JsonFormatter
from microframe.contrib.logging.handlers import QueueHandler, dropped_counter

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env, service_settings
from support.polling import wait_until
from support.servers import ServerProcess
from support.servers import say_hello as call

METHOD = "/helloworld.Greeter/SayHello"


class SlowHandler(logging.Handler):
    """A handler that cannot write until it is released (a stalled disk or terminal)."""

    def __init__(self) -> None:
        super().__init__()
        self.unblock = threading.Event()
        self.entered = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.unblock.wait(30)
        self.records.append(record)


@pytest.fixture
def isolated_logger():
    logger = logging.getLogger(f"microframe.test.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_a_stalled_writer_never_blocks_the_caller_and_drops_are_counted(isolated_logger):
    slow = SlowHandler()
    queue_handler = QueueHandler([slow], queue_size=10, report_every=0.0)
    isolated_logger.addHandler(queue_handler)
    before = dropped_counter()._value.get()
    isolated_logger.info("first")
    assert slow.entered.wait(10)  # the writer is stuck writing it
    start = time.perf_counter()
    for i in range(1000):
        isolated_logger.info("burst %d", i)
    elapsed = time.perf_counter() - start
    # 10 records wait in the queue, the other 990 are dropped, and nobody waited.
    assert elapsed < 0.5, f"1000 log calls took {elapsed:.3f} s with a stalled writer"
    assert queue_handler.dropped == 990
    assert dropped_counter()._value.get() - before == 990
    slow.unblock.set()
    queue_handler.stop()
    messages = [r.getMessage() for r in slow.records]
    assert messages[0] == "first"
    assert [m for m in messages if m.startswith("burst ")] == [f"burst {i}" for i in range(10)]
    report = [m for m in messages if "dropped" in m]
    assert len(report) == 1 and "990 dropped since start" in report[0], report


def test_records_are_prepared_in_the_callers_thread(isolated_logger):
    target = SlowHandler()
    target.unblock.set()
    handler = QueueHandler([target])
    isolated_logger.addHandler(handler)
    items = ["before"]
    isolated_logger.info("list is %s", items)
    items.append("after")  # changed before the writer takes the record: it must not show
    try:
        raise ValueError("boom")
    except ValueError:
        isolated_logger.exception("failed")
    handler.stop()
    assert target.records[0].getMessage() == "list is ['before']"
    assert target.records[1].exc_info is None and "ValueError: boom" in target.records[1].exc_text


def test_trace_level_between_debug_and_info(isolated_logger):
    assert logging.DEBUG < TRACE < logging.INFO and logging.getLevelName(TRACE) == "TRACE"
    target = SlowHandler()
    target.unblock.set()
    isolated_logger.addHandler(target)
    isolated_logger.setLevel("TRACE")
    trace(isolated_logger, "seen %d", 1)
    isolated_logger.debug("not seen")
    isolated_logger.setLevel(logging.INFO)
    trace(isolated_logger, "not seen either")
    assert [r.getMessage() for r in target.records] == ["seen 1"]


def test_json_formatter_lines_parse():
    record = logging.LogRecord("microframe.access", logging.INFO, __file__, 1, "done %s", ("x",), None)
    record.trace_id, record.service, record.method = "ab" * 16, "helloworld.Greeter", "SayHello"
    record.fields = {"user_id": 42}
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "done x" and data["level"] == "INFO" and data["logger"] == "microframe.access"
    assert data["trace_id"] == "ab" * 16 and data["fields"] == {"user_id": 42}
    assert data["time"].endswith("Z")


def test_size_rotation_keeps_the_configured_backups(tmp_path):
    config = default_logging({"DIR": str(tmp_path), "ROTATE_BYTES": 2000, "BACKUPS": 2}, "rotating", str(tmp_path))
    del config["handlers"]["console"]
    config["handlers"]["queue"]["handlers"] = ["file"]
    try:
        configure_logging(None, None, config)
        logger = logging.getLogger("microframe.rotation")
        for i in range(300):
            logger.info("line %04d %s", i, "x" * 40)
        for handler in logging.getLogger("microframe").handlers:
            handler.flush()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["rotating.log", "rotating.log.1", "rotating.log.2"], names
        assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
        assert "line 0299" in (tmp_path / "rotating.log").read_text()
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "loggers": {"microframe": {"handlers": [], "propagate": True}},
                                   "root": {"handlers": []}})


def test_time_rotation_is_a_setting(tmp_path):
    config = default_logging({"DIR": str(tmp_path), "ROTATE_WHEN": "midnight", "BACKUPS": 3}, "daily", str(tmp_path))
    file = config["handlers"]["file"]
    assert file["class"] == "microframe.contrib.logging.handlers.TimedRotatingFileHandler"
    assert file["when"] == "midnight" and file["backupCount"] == 3
    assert file["filename"] == str(tmp_path / "daily.log")


# -- real service processes ------------------------------------------------------------------


@pytest.fixture
def logged(tmp_path, transport):
    """Start a service process whose logs go to a directory of the test."""
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    started: list[ServerProcess] = []

    def start(log: dict, workers: int = 1, **extra: object) -> ServerProcess:
        module = f"svc_logged_{len(started)}"
        settings = service_settings(tmp_path, module, "logged", {
            "BACKEND": "microframe.contrib.registry.file.FileRegistry",
            "OPTIONS": {"directory": str(tmp_path / "registry")},
            "CACHE_DIR": str(tmp_path / "cache"),
        }, LOG={"DIR": str(tmp_path / f"logs-{module}"), **log}, **{"ACCESS_LOG": {"ENABLED": True}, **extra})
        server = ServerProcess(tmp_path, settings=settings, env=env, workers=workers, transport=transport)
        started.append(server)
        server.log_file = tmp_path / f"logs-{module}" / "logged.log"  # type: ignore[attr-defined]
        return server.wait_serving()

    yield start
    for server in started:
        server.kill()


def test_access_line_with_fields_sizes_and_redacted_metadata(logged):
    server = logged({}, ACCESS_LOG={"ENABLED": True, "METADATA": True, "REDACTED": ["authorization", "cookie", "x-tenant-secret"]})
    secrets = (("authorization", "Bearer s3cr3t-token"), ("cookie", "session=c00kie"),
               ("x-tenant-secret", "hush"), ("x-api-key", "defaults-still-apply"), ("x-user", "ada"))
    trace_id = call(server, "fields", metadata=secrets)
    assert server.terminate() == 0  # the graceful stop flushes the writer
    text = server.log_file.read_text()  # type: ignore[attr-defined]
    for _, secret in secrets[:3]:
        assert secret not in text and secret not in server.output
    line = next(line for line in text.splitlines() if "microframe.access" in line)
    assert f"[{trace_id} helloworld.Greeter SayHello] {METHOD} OK " in line
    assert " user_id=42 cache=hit" in line
    assert "in=8B out=34B" in line  # HelloRequest(name="fields"), HelloReply(message=<32 hex>)
    assert 'md.authorization="[REDACTED]"' in line and 'md.x-tenant-secret="[REDACTED]"' in line
    assert 'md.x-user="ada"' in line
    assert "peer=ipv4:127.0.0.1:" in line


def test_json_log_file_every_line_parses(logged):
    server = logged({"FORMAT": "json"}, ACCESS_LOG={"ENABLED": True, "METADATA": ["authorization", "x-user"]})
    trace_id = call(server, "fields", metadata=(("authorization", "Bearer s3cr3t"),))
    with pytest.raises(grpc.RpcError):
        call(server, "raise")
    assert server.terminate() == 0
    lines = [json.loads(line) for line in server.log_file.read_text().splitlines()]  # type: ignore[attr-defined]
    access = [line for line in lines if line["logger"] == "microframe.access"]
    assert [a["code"] for a in access] == ["OK", "INTERNAL"]
    ok = access[0]
    assert ok["trace_id"] == trace_id and ok["service"] == "helloworld.Greeter" and ok["method"] == "SayHello"
    assert ok["fields"] == {"user_id": 42, "cache": "hit"}
    assert ok["metadata"]["authorization"] == "[REDACTED]"
    assert ok["request_bytes"] == 8 and ok["response_bytes"] == 34 and ok["duration_ms"] >= 0
    assert access[1]["error"] == "ValueError"
    failure = next(line for line in lines if line["level"] == "ERROR")
    assert "ValueError: secret internal detail" in failure["exc_info"]
    assert failure["trace_id"] == access[1]["trace_id"]


def test_colored_and_load_test_calls_are_marked_and_no_value_forges_a_field(logged):
    """``color=`` and ``stress=1`` on the lines of steered traffic, with the configured stress
    key only; a caller's value is written so that it cannot pass for fields of its own."""
    text_server = logged({}, ACCESS_LOG={"ENABLED": True, "METADATA": ["x-user"]},
                         PROPAGATION={"STRESS_KEY": "x-md-global-loadtest"})
    json_server = logged({"FORMAT": "json"}, PROPAGATION={"STRESS_KEY": "x-md-global-loadtest"})
    hostile = 'ada" peer=ipv4:10.0.0.1:1 code="OK'
    sent = [
        (("x-md-global-color", "canary"),),
        (("x-md-global-loadtest", "1"),),
        (("x-md-global-stress", "1"),),  # not the configured key: no mark
        (("x-md-global-color", "blue code=OK"), ("x-md-global-loadtest", "0"), ("x-user", hostile)),
    ]
    for server in (text_server, json_server):
        for metadata in sent:
            call(server, "x", metadata=metadata)
        assert server.terminate() == 0
    lines = [line for line in text_server.log_file.read_text().splitlines()  # type: ignore[attr-defined]
             if "microframe.access" in line]
    assert lines[0].endswith(" color=canary") and lines[1].endswith(" stress=1")
    assert "color" not in lines[2] and "stress" not in lines[2]
    assert ' color="blue code=OK" md.x-user="ada\\" peer=ipv4:10.0.0.1:1 code=\\"OK"' in lines[3]
    outside_quotes = re.sub(r'"(?:[^"\\]|\\.)*"', '""', lines[3])
    assert "stress" not in lines[3] and outside_quotes.count(" peer=") == 1, outside_quotes
    assert outside_quotes.count(" code=") == 0
    access = [entry for entry in map(json.loads, json_server.log_file.read_text().splitlines())  # type: ignore[attr-defined]
              if entry["logger"] == "microframe.access"]
    assert [(a.get("color"), a.get("stress")) for a in access] == [
        ("canary", None), (None, True), (None, None), ("blue code=OK", None)]


def test_level_setting_filters_lines(logged):
    quiet = logged({"LEVEL": "WARNING"}, LOGGING={})  # (the test service sets a level in LOGGING)
    call(quiet, "trace")
    with pytest.raises(grpc.RpcError):
        call(quiet, "raise")
    assert quiet.terminate() == 0
    text = quiet.log_file.read_text()  # type: ignore[attr-defined]
    assert "microframe.access" not in text and "tracing this call" not in text
    assert "ERROR" in text and "secret internal detail" in text


def test_every_completed_call_is_logged_before_exit(logged):
    server = logged({})
    with grpc.insecure_channel(server.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        # 300 calls, 25 at a time: within one connection's share of the call slots however
        # slowly the machine serves them (all at once, a slow run had 50 running and was
        # refused the rest, rightly).
        for first in range(0, 300, 25):
            futures = [stub.SayHello.future(hello_pb2.HelloRequest(name=f"n{i}"), timeout=10)
                       for i in range(first, first + 25)]
            assert all(f.result().message.startswith("Hello") for f in futures)
    assert server.terminate() == 0
    access = [line for line in server.log_file.read_text().splitlines() if "microframe.access" in line]  # type: ignore[attr-defined]
    assert len(access) == 300


def test_access_log_can_be_switched_off(logged):
    server = logged({}, ACCESS_LOG={"ENABLED": False})
    call(server, "trace")
    assert server.terminate() == 0
    text = server.log_file.read_text()  # type: ignore[attr-defined]
    assert "tracing this call" in text and "microframe.access" not in text


def test_workers_write_a_file_each(logged):
    server = logged({}, workers=2)
    # Both listening (the health check that found the pool serving reached one of them).
    wait_until(lambda: "[worker 0]" in server.output and "[worker 1]" in server.output, 20, "both workers")
    pids = set()
    for _ in range(40):  # new connections: the kernel spreads them over both workers
        pids.add(call(server, "pid"))
    assert server.terminate() == 0
    directory = server.log_file.parent  # type: ignore[attr-defined]
    files = sorted(p.name for p in directory.iterdir())
    # A file per worker, and the supervisor's own.
    assert files == ["logged.0.log", "logged.1.log", "logged.log"], files
    logged_pids = {
        line.split()[3] for f in directory.iterdir() for line in f.read_text().splitlines()
        if "microframe.access" in line
    }
    assert logged_pids == pids


def test_an_unwritable_log_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (tmp_path / "badlog_settings.py").write_text(
        f"from testservice.settings import *\nLOG = {{'DIR': {str(blocker / 'logs')!r}}}\n"
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runserver", "127.0.0.1:0", "--noreload", "--settings", "badlog_settings"],
        cwd=ROOT, env=base_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{ROOT / 'tests'}"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert 'LOG["DIR"]: the log directory' in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_queue_keeps_its_handlers_alive_between_configuration_and_start():
    """The console and file handlers are attached to no logger, only to the queue, and logging
    names them through weak references: a garbage collection between ``dictConfig`` and the
    writer's start must not lose them ('no handler named 'console' is configured')."""
    code = (
        "import gc, logging.config\n"
        "from microframe.contrib.logging.config import default_logging\n"
        "from microframe.contrib.logging.handlers import QueueHandler\n"
        "gc.disable()\n"  # only the collection below may run
        "logging.config.dictConfig(default_logging({'DIR': None}, 'probe'))\n"
        "gc.collect()\n"
        "queue = next(h() for h in logging._handlerList if isinstance(h(), QueueHandler))\n"
        "queue.start()\n"
        "print([type(h).__name__ for h in queue.handlers])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ConsoleHandler']", result.stdout
