"""Management commands: discovery, help, errors, call_command."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from microframe.management import call_command
from microframe.management.base import CommandError

from support.env import ROOT, base_env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=base_env(**(env or {})),
        capture_output=True, text=True, timeout=60,
    )


def test_help_lists_framework_and_service_commands():
    result = run("manage.py", "help", "--settings", "testservice.settings")
    assert result.returncode == 0, result.stderr
    assert "[microframe]" in result.stdout and "runserver" in result.stdout and "check" in result.stdout
    assert "[testservice]" in result.stdout and "greet" in result.stdout


def test_help_of_one_command():
    result = run("manage.py", "help", "runserver")
    assert result.returncode == 0
    for flag in ("--noreload", "--workers", "--metrics-port", "--settings", "--pythonpath", "--traceback"):
        assert flag in result.stdout


def test_admin_script_and_module_entry_points():
    result = run("-m", "microframe", "help", "--commands")
    assert result.returncode == 0
    assert {"check", "runserver", "diffsettings"} <= set(result.stdout.split())
    result = run("-m", "microframe", "version")
    assert result.stdout.strip() == __import__("microframe").__version__


def test_command_from_service_package_with_pythonpath(tmp_path):
    result = run("-m", "microframe", "greet", "Ann", "--settings", "testservice.settings",
                 "--pythonpath", str(ROOT / "tests"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello, Ann from testservice"


def test_command_error_has_no_traceback_unless_asked():
    result = run("manage.py", "greet", "Ann", "--fail", "--settings", "testservice.settings")
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: cannot greet Ann"
    result = run("manage.py", "greet", "Ann", "--fail", "--traceback", "--settings", "testservice.settings")
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_unknown_command_suggests():
    result = run("manage.py", "runservr")
    assert result.returncode == 1
    assert "Unknown command: 'runservr'" in result.stderr and "runserver" in result.stderr


def test_bad_address_is_a_command_error():
    result = run("manage.py", "runserver", "not-an:address:x", "--noreload", "--skip-checks")
    assert result.returncode == 1
    assert "is not a valid HOST:PORT" in result.stderr and "Traceback" not in result.stderr


def test_help_with_a_dangling_settings_option_still_helps():
    result = run("manage.py", "help", "--settings")
    assert result.returncode == 0, result.stderr
    assert "runserver" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("address", ["99999", "127.0.0.1:70000"])
def test_out_of_range_port_is_a_command_error(address):
    result = run("manage.py", "runserver", address, "--noreload", "--skip-checks")
    assert result.returncode == 1
    assert "out of range" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port that a listening socket holds for the test."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize(
    ("where", "named", "fix"),
    [
        ("argument", "runserver's address argument",
         'another port with runserver HOST:PORT or PORT (or set GRPC["PORT"] in '),
        ("settings", 'GRPC["PORT"]',
         'another port with runserver HOST:PORT or PORT (or set GRPC["PORT"] in '),
    ],
)
def test_grpc_port_in_use_says_what_to_change(tmp_path: Path, taken_port: int, where, named, fix):
    (tmp_path / "inuse").mkdir()
    (tmp_path / "inuse" / "__init__.py").write_text("")
    port = taken_port if where == "settings" else 50051
    (tmp_path / "inuse" / "settings.py").write_text(
        f"from example.settings import *\nGRPC = {{**GRPC, 'PORT': {port}}}\n"
    )
    address = [f"127.0.0.1:{taken_port}"] if where == "argument" else []
    result = run("manage.py", "runserver", *address, "--noreload", "--metrics-port", "0",
                 "--settings", "inuse.settings", "--pythonpath", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    told = f"127.0.0.1:{taken_port} is already in use ({named}): stop what is using it, or serve"
    assert f"{told} on {fix}" in result.stderr, result.stderr
    assert str(tmp_path / "inuse" / "settings.py") in result.stderr


@pytest.mark.parametrize(
    ("where", "named"), [("flag", "--metrics-port"), ("settings", 'METRICS["PORT"]')]
)
def test_metrics_port_in_use_says_what_to_change(tmp_path: Path, taken_port: int, where, named):
    (tmp_path / "inuse").mkdir()
    (tmp_path / "inuse" / "__init__.py").write_text("")
    port = taken_port if where == "settings" else 9464
    (tmp_path / "inuse" / "settings.py").write_text(
        f"from example.settings import *\nMETRICS = {{**METRICS, 'PORT': {port}}}\n"
    )
    flag = ["--metrics-port", str(taken_port)] if where == "flag" else []
    result = run("manage.py", "runserver", "127.0.0.1:0", "--noreload", *flag,
                 "--settings", "inuse.settings", "--pythonpath", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    told = f"127.0.0.1:{taken_port} is already in use ({named}): stop what is using it, or serve "
    fix = 'on another port with --metrics-port PORT (or set METRICS["PORT"] in '
    assert told + fix in result.stderr, result.stderr
    assert str(tmp_path / "inuse" / "settings.py") in result.stderr


def test_call_command_from_code():
    out = io.StringIO()
    assert call_command("diffsettings", stdout=out) is not None
    with pytest.raises(CommandError, match="Unknown command"):
        call_command("nosuchcommand")
    with pytest.raises(TypeError, match="Unknown option"):
        call_command("diffsettings", nosuchoption=True)


@pytest.mark.parametrize("busy", ["grpc", "metrics"])
def test_a_port_in_use_stops_runserver_under_the_reloader_too(tmp_path: Path, taken_port: int, busy):
    """DEBUG on (a new service's default): the reloader would keep restarting a child that
    cannot bind; runserver refuses before it starts, with the same message and status 1."""
    (tmp_path / "inuse").mkdir()
    (tmp_path / "inuse" / "__init__.py").write_text("")
    grpc_port, metrics_port = (taken_port, 0) if busy == "grpc" else (0, taken_port)
    (tmp_path / "inuse" / "settings.py").write_text(
        "from example.settings import *\nDEBUG = True\n"
        f"GRPC = {{**GRPC, 'PORT': {grpc_port}}}\nMETRICS = {{**METRICS, 'PORT': {metrics_port}}}\n"
    )
    result = run("manage.py", "runserver", "--settings", "inuse.settings", "--pythonpath", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    setting = 'GRPC["PORT"]' if busy == "grpc" else 'METRICS["PORT"]'
    assert f"127.0.0.1:{taken_port} is already in use ({setting})" in result.stderr, result.stderr
    assert "Watching" not in result.stdout and "Traceback" not in result.stderr


def test_both_ports_in_use_are_both_named(tmp_path: Path, taken_port: int):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        metrics_port = other.getsockname()[1]
        result = run("manage.py", "runserver", f"127.0.0.1:{taken_port}", "--noreload",
                     "--metrics-port", str(metrics_port))
    assert result.returncode == 1, result.stdout
    assert f"127.0.0.1:{taken_port} is already in use (runserver's address argument)" in result.stderr
    assert f"127.0.0.1:{metrics_port} is already in use (--metrics-port)" in result.stderr
