"""Batteries: BATTERIES, battery.py modules, ready() once, their checks and commands."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from microframe import batteries
from microframe.batteries import Battery, get_batteries, load_battery, setup_batteries
from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured
from microframe.test.utils import override_settings

from conftest import ROOT, base_env


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.mark.parametrize(
    "module", ["microframe.core.checks", "microframe.core.server", "microframe.management"]
)
def test_the_framework_imports_no_battery(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print([m for m in sys.modules if m.startswith('microframe.contrib')])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base_env(), capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_default_batteries_are_the_contrib_packages() -> None:
    packages = (ROOT / "microframe" / "contrib").glob("*/__init__.py")
    contrib = sorted(f"microframe.contrib.{p.parent.name}" for p in packages)
    assert sorted(global_settings.BATTERIES) == contrib
    loaded = get_batteries()
    assert [b.name for b in loaded] == global_settings.BATTERIES
    assert [b.label for b in loaded] == [n.rpartition(".")[2] for n in global_settings.BATTERIES]
    assert all(isinstance(b, Battery) for b in loaded)


def test_the_batteries_checks_are_registered_before_the_checks_run() -> None:
    from microframe.core import checks

    tags = checks.registry.tags_available()
    assert {"registry", "logging", "tracing", "limiter", "gateway", "auth", "client"} <= tags


def test_an_entry_may_name_the_battery_class() -> None:
    battery = load_battery("microframe.contrib.registry.battery.RegistryBattery")
    assert type(battery).__name__ == "RegistryBattery"
    assert (battery.name, battery.label) == ("microframe.contrib.registry", "registry")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no_such_package", "'no_such_package' does not import"),
        ("microframe.no_such_module.Battery", "does not import"),
        ("microframe.utils", "'microframe.utils' has no battery.py module"),
        ("microframe.conf.global_settings", "is a module, not a package"),
        ("microframe.conf.global_settings.DEBUG", "'DEBUG' is not a Battery subclass"),
        ("microframe.conf.global_settings.Nothing", "'Nothing' is not defined"),
        ("", "must be dotted paths"),
    ],
)
def test_an_entry_that_is_no_battery_is_improperly_configured(entry: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message.replace(".", r"\.")):
        load_battery(entry)


def test_an_import_error_inside_a_battery_is_not_taken_for_a_missing_one(tmp_path, monkeypatch):
    write(tmp_path / "broken_bat" / "__init__.py", "import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImproperlyConfigured, match="not_installed_anywhere"):
        load_battery("broken_bat")


def test_a_battery_module_needs_exactly_one_battery(tmp_path, monkeypatch):
    write(tmp_path / "empty_bat" / "__init__.py", "")
    write(tmp_path / "empty_bat" / "battery.py", "from microframe.batteries import Battery\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImproperlyConfigured, match="defines no Battery subclasses"):
        load_battery("empty_bat")


def test_each_battery_is_imported_and_readied_once(tmp_path, monkeypatch):
    write(tmp_path / "counted" / "__init__.py", "IMPORTS = []\nREADY = []\n")
    write(
        tmp_path / "counted" / "battery.py",
        """
        import counted
        from microframe.batteries import Battery

        counted.IMPORTS.append(1)


        class CountedBattery(Battery):
            def ready(self) -> None:
                counted.READY.append(self.label)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(batteries, "_loaded", dict(batteries._loaded))
    monkeypatch.setattr(batteries, "_ready", set(batteries._ready))
    with override_settings(BATTERIES=[*global_settings.BATTERIES, "counted", "counted"]):
        setup_batteries()
        setup_batteries()
        from microframe.core import checks

        checks.run_checks(tags=["none"])
        assert [b.name for b in get_batteries()][-1] == "counted"
    import counted

    assert counted.IMPORTS == [1]
    assert counted.READY == ["counted"]


def test_a_malformed_setting_is_left_to_the_checks() -> None:
    with override_settings(BATTERIES="microframe.contrib.registry"):
        assert get_batteries() == []
