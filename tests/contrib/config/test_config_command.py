"""``manage.py config`` against a real etcd, as a user types it: every action, its output, its
errors, and what it leaves in etcd (read back with etcdctl, an independent client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from contrib.config.support_config import config_settings, env, manage_config, put, stored_revision

from support.env import ROOT

if not os.environ.get("CI"):
    pytest.importorskip("aetcd")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(etcd, prefix, tmp_path: Path) -> str:
    return config_settings(tmp_path, f"cmd_{uuid.uuid4().hex[:6]}", etcd.endpoints, prefix)


def run(tmp_path: Path, settings: str, *args: str) -> subprocess.CompletedProcess[str]:
    return manage_config(tmp_path, settings, *args)


def test_set_get_unset_in_both_scopes(etcd, prefix, settings, tmp_path: Path):
    first = run(tmp_path, settings, "set", "LIMITER", '{"OPTIONS": {"rate": 9, "burst": 9}}')
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("LIMITER stored for cfgsvc at revision ")
    shared = run(tmp_path, settings, "set", "LOG", '{"LEVEL": "WARNING"}', "--shared")
    assert "LOG stored for shared at revision" in shared.stdout
    stored = etcd.get_prefix(prefix + "/")
    assert json.loads(stored[f"{prefix}/cfgsvc/LIMITER"].value) == {
        "OPTIONS": {"burst": 9, "rate": 9}
    }
    assert json.loads(stored[f"{prefix}/_shared/LOG"].value) == {"LEVEL": "WARNING"}

    listing = run(tmp_path, settings, "get").stdout.splitlines()
    assert listing[0].startswith('LOG (shared, revision ') and listing[0].endswith(
        '{"LEVEL": "WARNING"}'
    )
    assert listing[1].startswith("LIMITER (cfgsvc, revision ")
    value = json.loads(run(tmp_path, settings, "get", "LIMITER").stdout)
    assert value["OPTIONS"] == {"rate": 9, "burst": 9}
    assert value["MODE"] == "reject"  # the local value, merged under the stored one
    assert json.loads(run(tmp_path, settings, "get", "LOG").stdout)["LEVEL"] == "WARNING"

    # The service's scope wins over the shared one.
    run(tmp_path, settings, "set", "LOG", '{"LEVEL": "ERROR"}')
    assert json.loads(run(tmp_path, settings, "get", "LOG").stdout)["LEVEL"] == "ERROR"
    removed = run(tmp_path, settings, "unset", "LOG")
    assert "LOG removed for cfgsvc at revision" in removed.stdout
    assert json.loads(run(tmp_path, settings, "get", "LOG").stdout)["LEVEL"] == "WARNING"
    assert "was not stored" in run(tmp_path, settings, "unset", "LOG").stdout
    assert f"{prefix}/cfgsvc/LOG" not in etcd.get_prefix(prefix + "/")


def test_bad_input_gets_a_clear_error_and_stores_nothing(etcd, prefix, settings, tmp_path):
    cases = [
        (("set", "LIMITER", "{rate: 1}"), "LIMITER: the value is not JSON"),
        (("set", "limiter", "{}"), "'limiter' is not a setting name"),
        (("set", "SERVICE_NAME", '"other"'), "SERVICE_NAME cannot come from the configuration"),
        (("set", "CLIENTS", '{"orders": {"TIMEOUT": -1}}'), "client.E001"),
        (("get", "NO_SUCH_SETTING"), "NO_SUCH_SETTING is not a setting of cfgsvc"),
        (("rollback", "LIMITER", "1"), "LIMITER was not stored for cfgsvc at revision 1"),
    ]
    for args, message in cases:
        result = run(tmp_path, settings, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
    assert etcd.get_prefix(prefix + "/") == {}


def test_values_nested_too_deep_are_refused_and_never_crash_a_command(
    etcd, prefix, settings, tmp_path
):
    """Python's JSON parser, the checks and the redaction of secrets recurse: a value nested a
    thousand deep must be a clear error, whether it comes from the command or from etcd."""
    def nested(depth: int) -> str:
        return '{"a": ' * depth + "1" + "}" * depth

    for depth in (33, 5000):
        result = run(tmp_path, settings, "set", "FEATURES", nested(depth))
        assert result.returncode == 1, result.stdout
        assert "FEATURES: the value is nested more than 32 levels deep" in result.stderr
        assert "Traceback" not in result.stderr
    assert etcd.get_prefix(prefix + "/") == {}
    assert run(tmp_path, settings, "set", "FEATURES", nested(31)).returncode == 0
    # Written by another etcd client: every action goes on, and says what is wrong.
    etcd.etcdctl("put", f"{prefix}/cfgsvc/FEATURES", nested(990))
    etcd.etcdctl("put", f"{prefix}/cfgsvc/LIMITER", nested(990))
    for args in (("get",), ("diff",), ("history", "FEATURES"), ("check",)):
        result = run(tmp_path, settings, *args) if args != ("check",) else subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "check", "--settings", settings],
            cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=60,
        )
        assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
        assert result.returncode == 0, (args, result.stderr)
    listing = run(tmp_path, settings, "get").stdout
    assert f"{prefix}/cfgsvc/FEATURES: invalid, nested more than 32 levels deep" in listing
    history = run(tmp_path, settings, "history", "FEATURES").stdout.splitlines()
    assert "(invalid: nested more than 32 levels deep)" in history[0]
    assert history[1].endswith("}}}}}") and "invalid" not in history[1]
    assert run(tmp_path, settings, "set", "LIMITER", '{"OPTIONS": {"rate": 4, "burst": 4}}').returncode == 0
    # Larger than etcd takes in one request: said as such, not as etcd being unavailable.
    for size in (1_700_000, 3_000_000):
        big = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "config", "set", "FEATURES", "-",
             "--settings", settings],
            cwd=ROOT, env=env(tmp_path), input=json.dumps({"blob": "x" * size}),
            capture_output=True, text=True, timeout=60,
        )
        assert big.returncode == 1, big.stdout
        assert "more than etcd takes in one request" in big.stderr, big.stderr
        assert "unavailable" not in big.stderr


def test_diff_history_and_rollback(etcd, prefix, settings, tmp_path: Path):
    revisions = [
        stored_revision(run(tmp_path, settings, "set", "LIMITER",
                            json.dumps({"OPTIONS": {"rate": rate, "burst": rate}})))
        for rate in (10, 20, 30)
    ]
    history = run(tmp_path, settings, "history", "LIMITER").stdout.splitlines()
    assert [int(line.split()[0]) for line in history] == revisions[::-1]
    assert history[0].endswith('{"OPTIONS": {"burst": 30, "rate": 30}}')

    diff = run(tmp_path, settings, "diff").stdout
    assert "--- LIMITER (local)" in diff and "+++ LIMITER (in force)" in diff
    assert '-    "burst": 3,' in diff and '+    "burst": 30,' in diff

    back = run(tmp_path, settings, "rollback", "LIMITER", str(revisions[0]))
    rolled = stored_revision(back)
    assert rolled > revisions[-1]
    assert json.loads(run(tmp_path, settings, "get", "LIMITER").stdout)["OPTIONS"] == {
        "rate": 10, "burst": 10
    }
    history = run(tmp_path, settings, "history", "LIMITER").stdout.splitlines()
    assert int(history[0].split()[0]) == rolled and len(history) == 4
    run(tmp_path, settings, "unset", "LIMITER")
    assert "No stored setting changes a local one." in run(tmp_path, settings, "diff").stdout


def test_watch_prints_every_change_as_it_happens(etcd, prefix, settings, tmp_path: Path):
    watch = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "config", "watch", "--count", "3",
         "--timeout", "30", "--settings", settings],
        cwd=ROOT, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert watch.stdout is not None
        header = watch.stdout.readline()
        assert header.startswith("Watching the settings of cfgsvc at etcd at ")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(watch.stdout))  # type: ignore[arg-type]
        reader.start()
        first = put(etcd, prefix, "cfgsvc", "LIMITER", {"OPTIONS": {"rate": 5, "burst": 5}})
        second = put(etcd, prefix, "_shared", "AUTH", {"TOKENS": {"bob": "s3cret"}})
        etcd.etcdctl("put", f"{prefix}/other/LIMITER", "{}")  # another service's: not shown
        etcd.etcdctl("del", f"{prefix}/cfgsvc/LIMITER")
        assert watch.wait(30) == 0, watch.stderr.read() if watch.stderr else ""
        reader.join(10)
    finally:
        watch.kill()
    assert lines[0] == f'{first} cfgsvc LIMITER {{"OPTIONS": {{"burst": 5, "rate": 5}}}}\n'
    assert lines[1] == f'{second} shared AUTH {{"TOKENS": "********"}}\n'
    assert lines[2].endswith(" cfgsvc LIMITER removed\n")
    assert len(lines) == 3


def test_without_a_configuration_center_the_command_says_so(tmp_path: Path):
    from support.env import service_settings

    plain = service_settings(tmp_path, "cmd_plain", "plain", {"REGISTER": False})
    result = manage_config(tmp_path, plain, "get")
    assert result.returncode == 1
    assert 'No configuration center: CONFIG["BACKEND"] is None' in result.stderr


def test_metadata_secrets_are_hidden_a_value_comes_from_stdin_and_usage_errors_exit_2(
    etcd, prefix, settings, tmp_path: Path
):
    value = {"users": {"TIMEOUT": 1, "METADATA": [
        ["authorization", "Bearer s3cr3t-client"], ["x-api-key", "s3cr3t-key"],
        ["x-request-id", "visible"],
    ]}}
    stored = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "config", "set", "CLIENTS", "-",
         "--settings", settings],
        cwd=ROOT, env=env(tmp_path), input=json.dumps(value), capture_output=True, text=True,
        timeout=30,
    )
    assert stored.returncode == 0, stored.stderr
    for action in (("get",), ("get", "CLIENTS"), ("diff",), ("history", "CLIENTS")):
        shown = run(tmp_path, settings, *action).stdout
        assert "s3cr3t" not in shown and "visible" in shown, (action, shown)
    assert "s3cr3t-client" in run(tmp_path, settings, "get", "CLIENTS", "--reveal").stdout
    for args in (("set", "LIMITER"), ("watch", "--count", "x"), ("rollback", "LIMITER", "abc")):
        result = run(tmp_path, settings, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("usage: manage.py config"), result.stderr
        assert "Traceback" not in result.stderr
    ahead = run(tmp_path, settings, "rollback", "CLIENTS", "999999")
    assert ahead.returncode == 1
    assert "revision 999999 is ahead of the store's" in ahead.stderr
    short = run(tmp_path, settings, "watch", "--count", "2", "--timeout", "0.5")
    assert short.returncode == 1 and "0 of the 2 changes asked for" in short.stderr


def test_the_etcd_options_of_the_registry_work_here_too_tls_and_a_password(
    make_cluster, prefix, tmp_path: Path
):
    """CONFIG["OPTIONS"] are the etcd registry's: a cluster with client certificates, then one
    with authentication; a wrong password is a clear error naming the endpoints."""
    from support.etcd_cluster import generate_tls

    tls = generate_tls(tmp_path / "pki")
    secure = make_cluster(tls=tls)
    files = {"ca_cert": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)}
    settings = config_settings(tmp_path, "cmd_tls", secure.endpoints, prefix)
    module = tmp_path / "cmd_tls" / "settings.py"
    module.write_text(module.read_text() + f'CONFIG["OPTIONS"].update({files!r})\n')
    assert "stored for cfgsvc" in run(tmp_path, settings, "set", "LOG", '{"LEVEL": "DEBUG"}').stdout
    assert json.loads(run(tmp_path, settings, "get", "LOG").stdout)["LEVEL"] == "DEBUG"
    assert json.loads(secure.get_prefix(prefix)[f"{prefix}/cfgsvc/LOG"].value) == {"LEVEL": "DEBUG"}

    guarded = make_cluster()
    guarded.enable_auth("s3cret")
    for name, password, works in (("cmd_auth", "s3cret", True), ("cmd_wrong", "wrong", False)):
        settings = config_settings(tmp_path, name, guarded.endpoints, prefix)
        module = tmp_path / name / "settings.py"
        module.write_text(module.read_text() + "CONFIG['OPTIONS'].update("
                          f"{{'user': 'root', 'password': {password!r}}})\n")
        result = run(tmp_path, settings, "set", "LOG", '{"LEVEL": "ERROR"}')
        if works:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode == 1
            assert "authentication failed for user 'root'" in result.stderr
            assert guarded.endpoints[0] in result.stderr
            assert "s3cret" not in result.stderr and "wrong" not in result.stderr.split(
                "authentication failed")[0]
