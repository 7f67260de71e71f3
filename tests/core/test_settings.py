"""Settings: the lazy object, YAML overlays per environment, override_settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from microframe.conf import LazySettings, Settings, settings
from microframe.core.exceptions import ImproperlyConfigured
from microframe.core.signals import setting_changed
from microframe.test import override_settings

from support.env import ROOT, base_env, service_settings


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT, env=base_env(**(env or {})), capture_output=True, text=True, timeout=60,
    )


def test_module_over_defaults(monkeypatch):
    monkeypatch.delenv("MICROFRAME_ENV", raising=False)
    s = Settings("testservice.settings")
    assert s.SERVICE_NAME == "testservice"
    assert s.GRPC["MAX_MESSAGE_BYTES"] == 64 * 1024
    assert s.GRPC["HEALTH"] is True  # dict settings merge over the defaults
    assert s.MIDDLEWARE == [
        "microframe.contrib.metrics.middleware.MetricsMiddleware",
        "microframe.contrib.tracing.middleware.TracingMiddleware",
        "microframe.contrib.logging.middleware.AccessLogMiddleware",
        "microframe.contrib.auth.middleware.AuthMiddleware",
        "microframe.contrib.limiter.middleware.RateLimitMiddleware",
        "microframe.contrib.limiter.shedding.SheddingMiddleware",
        "microframe.contrib.validation.middleware.ValidationMiddleware",
    ]
    assert s.is_overridden("GRPC") and not s.is_overridden("MIDDLEWARE")


def test_yaml_overlay_merges_dicts_deeply(monkeypatch):
    monkeypatch.setenv("MICROFRAME_ENV", "test")
    s = Settings("testservice.settings")
    assert s.GREETING == "Howdy"
    assert s.SERVICE_NAME == "testservice-test"  # the second file, in name order
    assert s.LIMITS == {"a": 1, "nested": {"x": 1, "y": 20, "z": 30}}
    assert not hasattr(s, "lowercase_ignored")
    assert [p.rsplit("/", 1)[-1] for p in s.SETTINGS_FILES] == ["settings.py", "10-grpc.yaml", "20-service.yml"]


def test_broken_yaml_names_file_and_line(monkeypatch):
    monkeypatch.setenv("MICROFRAME_ENV", "broken")
    with pytest.raises(ImproperlyConfigured) as info:
        Settings("testservice.settings")
    message = str(info.value)
    assert "conf/broken/10-bad.yaml:4:" in message, message


def test_missing_environment_directory(monkeypatch):
    monkeypatch.setenv("MICROFRAME_ENV", "nosuchenv")
    with pytest.raises(ImproperlyConfigured, match="nosuchenv"):
        Settings("testservice.settings")


def test_missing_settings_module_is_one_clear_error():
    with pytest.raises(ImproperlyConfigured, match="'nosuch.settings' cannot be found"):
        Settings("nosuch.settings")
    result = manage("diffsettings", "--settings", "nosuch.settings")
    assert result.returncode != 0
    assert "ImproperlyConfigured: Settings module 'nosuch.settings' cannot be found" in result.stderr
    assert "Traceback" not in result.stderr


def test_unconfigured_lazy_settings(monkeypatch):
    monkeypatch.delenv("MICROFRAME_SETTINGS_MODULE", raising=False)
    lazy = LazySettings()
    with pytest.raises(ImproperlyConfigured, match="settings are not configured"):
        lazy.DEBUG  # noqa: B018
    lazy.configure(DEBUG=True, GRPC={"PORT": 1234})
    assert lazy.DEBUG is True
    assert lazy.GRPC["PORT"] == 1234 and lazy.GRPC["HOST"] == "127.0.0.1"
    with pytest.raises(RuntimeError):
        lazy.configure()


def test_override_settings_as_context_manager_and_decorator():
    seen = []

    def receiver(sender, setting, value, enter, **kwargs):
        seen.append((setting, value, enter))

    setting_changed.connect(receiver)
    try:
        before = settings.SERVICE_NAME
        with override_settings(SERVICE_NAME="overridden", NEW_ONE=1):
            assert settings.SERVICE_NAME == "overridden"
            assert settings.NEW_ONE == 1
        assert settings.SERVICE_NAME == before
        assert not hasattr(settings, "NEW_ONE")

        @override_settings(GRPC={"PORT": 1}, merge=True)
        def decorated():
            return settings.GRPC

        grpc_settings = decorated()
        assert grpc_settings["PORT"] == 1 and grpc_settings["HOST"] == "127.0.0.1"
        assert settings.GRPC["PORT"] == 50051
    finally:
        setting_changed.disconnect(receiver)
    assert ("SERVICE_NAME", "overridden", True) in seen
    assert ("SERVICE_NAME", before, False) in seen
    assert ("GRPC", settings.GRPC, False) in seen


@override_settings(SERVICE_NAME="on-a-class")
class TestOverrideOnAClass:
    def test_method_sees_it(self):
        assert settings.SERVICE_NAME == "on-a-class"

    async def test_async_method_sees_it(self):
        assert settings.SERVICE_NAME == "on-a-class"


def test_overlay_applies_to_commands_run_as_a_user_would():
    result = manage("greet", "Bob", "--settings", "testservice.settings", env={"MICROFRAME_ENV": "test"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Howdy, Bob from testservice-test"
    result = manage("diffsettings", "--settings", "testservice.settings", env={"MICROFRAME_ENV": "test"})
    assert "GREETING = 'Howdy'" in result.stdout
    assert "'z': 30" in result.stdout
    result = manage("greet", "Bob", "--settings", "testservice.settings", env={"MICROFRAME_ENV": "broken"})
    assert result.returncode == 1
    assert "10-bad.yaml:4" in result.stderr and "Traceback" not in result.stderr


def test_diffsettings_and_checks_never_show_secrets(tmp_path):
    """Row 14 of the hostile-client probes: ``diffsettings`` printed the etcd password."""
    module = service_settings(
        tmp_path, "secretive", "testservice",
        {"BACKEND": "microframe.contrib.registry.etcd.EtcdRegistry",
         "OPTIONS": {"endpoints": ["127.0.0.1:2379"], "user": "svc", "password": "hunter2-etcd"}},
        LIMITER={"BACKEND": "microframe.contrib.limiter.redis.RedisLimiter",
                 "OPTIONS": {"url": "redis://:hunter2-redis@127.0.0.1:6379/0", "rate": 10, "burst": 10}},
        AUTH={"ENABLED": True, "TOKENS": {"ci": "hunter2-token"}},
        TRACING={"OTLP": {"HEADERS": {"authorization": "Bearer hunter2-otlp"}}},
        GATEWAY={"FORWARD_HEADERS": "not-a-list"},
    )
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'tests'}"}
    shown = manage("diffsettings", "--all", "--settings", module, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout, shown.stdout
    # What is not a secret is still shown; the secrets' places are marked.
    assert "'user': 'svc'" in shown.stdout and "redis://:********@127.0.0.1:6379/0" in shown.stdout
    assert "'password': '********'" in shown.stdout and "'TOKENS': '********'" in shown.stdout
    checked = manage("check", "--settings", module, env=env)
    assert "FORWARD_HEADERS" in checked.stderr + checked.stdout  # reported, without any secret
    assert "hunter2-etcd" not in checked.stderr + checked.stdout and "hunter2-redis" not in checked.stderr + checked.stdout
