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

from support.env import ROOT, base_env, service_settings


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.mark.parametrize(
    "module",
    [
        "microframe.core.checks", "microframe.core.server", "microframe.client",
        "microframe.management", "microframe.conf", "microframe.discovery", "microframe.codegen",
        "microframe.management.commands.runserver",
    ],
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


# A service's own package as a battery. ----------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, str]:
    static = {"BACKEND": "microframe.contrib.registry.static.StaticRegistry"}
    module = service_settings(tmp_path, "shop", "shop", static)
    with (tmp_path / "shop" / "settings.py").open("a") as settings_file:
        settings_file.write(
            "from microframe.conf import global_settings\n"
            'BATTERIES = [*global_settings.BATTERIES, "shop"]\n'
        )
    write(
        tmp_path / "shop" / "battery.py",
        '''
        from microframe.batteries import Battery


        class ShopBattery(Battery):
            name = "shop"

            def ready(self) -> None:
                import shop.checks  # noqa: F401
        ''',
    )
    write(
        tmp_path / "shop" / "checks.py",
        '''
        from microframe.core.checks import Warning, register


        @register("shop")
        def check_shop(**kwargs):
            return [Warning("The shop is closed.", id="shop.W001")]
        ''',
    )
    write(tmp_path / "shop" / "management" / "__init__.py", "")
    write(tmp_path / "shop" / "management" / "commands" / "__init__.py", "")
    write(
        tmp_path / "shop" / "management" / "commands" / "hello.py",
        '''
        from microframe.management.base import BaseCommand


        class Command(BaseCommand):
            help = "Say hello."
            requires_system_checks = []

            def handle(self, *args, **options):
                return "hello from the shop"
        ''',
    )
    return tmp_path, module


def run_shop(shop: tuple[Path, str], *args: str) -> subprocess.CompletedProcess[str]:
    directory, module = shop
    return subprocess.run(
        [sys.executable, "-m", "microframe", *args, "--settings", module,
         "--pythonpath", str(directory)],
        cwd=directory, env=base_env(), capture_output=True, text=True, timeout=60,
    )


def test_a_service_battery_registers_its_checks(shop) -> None:
    result = run_shop(shop, "check")
    assert result.returncode == 0, result.stderr
    assert "?: (shop.W001) The shop is closed." in result.stderr
    result = run_shop(shop, "check", "--tag", "shop")
    assert result.returncode == 0, result.stderr
    assert "shop.W001" in result.stderr


def test_a_service_battery_adds_its_commands(shop) -> None:
    result = run_shop(shop, "help")
    assert result.returncode == 0, result.stderr
    assert "[shop]\n    hello\n" in result.stdout
    assert "[microframe.contrib.registry]\n    register\n" in result.stdout
    result = run_shop(shop, "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from the shop"


def test_a_battery_that_does_not_load_is_reported(shop) -> None:
    directory, module = shop
    with (directory / "shop" / "settings.py").open("a") as settings_file:
        settings_file.write('BATTERIES = [*BATTERIES, "no_such_battery"]\n')
    result = run_shop(shop, "check")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "ImproperlyConfigured: BATTERIES entry 'no_such_battery' does not import: "
        "no such package or module."
    )
    result = run_shop(shop, "register", "--list")
    assert result.returncode == 1
    assert "ImproperlyConfigured: BATTERIES entry 'no_such_battery'" in result.stderr


# Signals: the batteries act on the server's life cycle; the runtime names none of them. --------


def test_a_receiver_that_raises_is_logged_and_the_others_run(caplog) -> None:
    import asyncio

    from microframe.utils.signals import Signal

    signal = Signal("probe")
    seen: list[str] = []

    def broken(sender, **kwargs):
        raise RuntimeError("broken receiver")

    async def later(sender, **kwargs):
        seen.append(kwargs["value"])

    signal.connect(broken)
    signal.connect(later)
    with caplog.at_level("ERROR", logger="microframe.signals"):
        asyncio.run(signal.asend(None, value="sent"))
    assert seen == ["sent"]
    assert "a probe receiver" in caplog.text and "broken receiver" in caplog.text


def test_a_server_a_test_starts_is_not_registered(tmp_path) -> None:
    """The registry battery registers runserver's server only (``server.process``), not one a
    program or a test starts, even with REGISTER on; and runserver's, with the same settings."""
    import asyncio

    from microframe.core.server import Server, ServerConfig
    from microframe.core.serving import ServingProcess
    from microframe.discovery import build_registry
    from microframe.test import serve

    setup_batteries()
    registry = {
        "BACKEND": "microframe.contrib.registry.file.FileRegistry",
        "OPTIONS": {"directory": str(tmp_path / "registry")}, "REGISTER": True,
    }

    async def instances() -> list[str]:
        reg = build_registry()
        try:
            return [i.address for i in await reg.instances("testservice")]
        finally:
            await reg.close()

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with serve(routes=[], middleware=[]):
            by_test = await instances()
        process = ServingProcess("server", "127.0.0.1", 0)
        server = Server([], config=ServerConfig.from_settings(port=0), process=process)
        await server.start()
        try:
            by_runserver = await instances()
        finally:
            await server.stop(0.5)
        return by_test, by_runserver, await instances()

    with override_settings(REGISTRY=registry, SERVICE_NAME="testservice"):
        by_test, by_runserver, after = asyncio.run(scenario())
    assert by_test == []
    assert len(by_runserver) == 1 and by_runserver[0].startswith("127.0.0.1:")
    assert after == []
