"""``config``: read and write the settings the configuration center keeps for this service."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import functools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from microframe.management.base import BaseCommand, CommandError, CommandParser

T = TypeVar("T")
#: Seconds ``config watch`` waits at most (``--timeout``; 0: until CONTROL-C).
FOREVER = 0.0


def _json(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, sort_keys=True, default=repr)


class Command(BaseCommand):
    help = (
        "Read and write the settings the configuration center (CONFIG) keeps for this service: "
        "get [SETTING], set SETTING JSON [--shared] (checked first; --force skips the checks), "
        "unset SETTING, diff (what the stored settings change), history SETTING, rollback "
        "SETTING REVISION, watch. Secrets are shown as ******** unless --reveal."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        # The actions' parsers report a bad command line as the command's does (usage, status 2).
        actions = parser.add_subparsers(
            dest="action", metavar="ACTION",
            parser_class=functools.partial(
                CommandParser, called_from_command_line=parser.called_from_command_line
            ),
        )
        actions.required = True

        def action(name: str, help: str, *, setting: bool = True) -> Any:
            sub = actions.add_parser(name, help=help, description=help)
            if setting:
                sub.add_argument("setting", metavar="SETTING", help="A setting name (LIMITER).")
            sub.add_argument(
                "--shared", action="store_true",
                help="The shared scope (every service) instead of this service's.",
            )
            sub.add_argument("--reveal", action="store_true", help="Show secrets as they are.")
            # The command's common options, after the action too (config set X Y --settings S).
            sub.add_argument("--settings", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            sub.add_argument("--pythonpath", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            sub.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)
            return sub

        get = action("get", "Show a setting in force (local, then stored), or every stored "
                     "setting.", setting=False)
        get.add_argument("setting", metavar="SETTING", nargs="?")
        put = action("set", "Store SETTING's JSON (checked with the system checks first).")
        put.add_argument("json", metavar="JSON", help='The setting\'s value, e.g. \'{"OPTIONS": '
                         '{"rate": 100, "burst": 100}}\' (merged over the local value); "-" reads '
                         "it from the standard input (a value too long for a command line).")
        put.add_argument("--force", action="store_true", help="Store it without the checks.")
        action("unset", "Remove SETTING from the configuration center (back to the local "
               "value).")
        action("diff", "Show what the stored settings change from the local ones.",
               setting=False)
        action("history", "Show the values SETTING held, newest first, with their revisions.")
        back = action("rollback", "Store again the value SETTING held at REVISION (checked).")
        back.add_argument("revision", metavar="REVISION", type=int)
        back.add_argument("--force", action="store_true", help="Store it without the checks.")
        watch = action("watch", "Print every change of the stored settings as it happens.",
                       setting=False)
        watch.add_argument("--count", type=int, default=0,
                           help="Stop after this many changes (default: never).")
        watch.add_argument("--timeout", type=float, default=FOREVER,
                           help="Stop after this many seconds (default: never).")

    # -- plumbing ------------------------------------------------------------------------------

    def handle(self, *args: Any, **options: Any) -> None:
        from microframe.batteries import setup_batteries
        from microframe.contrib.config.backend import (
            ConfigUnavailable,
            InvalidLayer,
            config_options,
            make_backend,
        )

        if not config_options().get("BACKEND"):
            raise CommandError(
                'No configuration center: CONFIG["BACKEND"] is None (e.g. "microframe.contrib.'
                'config.etcd.EtcdConfig", see docs/topics/config.md).'
            )
        setup_batteries()
        self.options = options
        handler: Callable[[Any], Awaitable[None]] = getattr(self, f"do_{options['action']}")

        async def run() -> None:
            backend = make_backend()
            assert backend is not None
            try:
                await handler(backend)
            finally:
                await backend.close()

        try:
            asyncio.run(run())
        except ConfigUnavailable as err:
            raise CommandError(f"configuration center unavailable: {err}") from None
        except InvalidLayer as err:
            raise CommandError(str(err)) from None
        except KeyboardInterrupt:
            pass

    def shown(self, value: Any, name: str) -> Any:
        from microframe.conf.redaction import redact

        return value if self.options["reveal"] else redact(value, name)

    @property
    def scope(self) -> str:
        from microframe.conf import settings

        return "shared" if self.options["shared"] else str(settings.SERVICE_NAME)

    def effective(self, name: str, layers: Any) -> Any:
        from microframe.contrib.config.layers import effective, state

        return effective(name, state.local, layers)

    def check(self, name: str, value: Any) -> None:
        """Refuse (CommandError) a value whose effective setting fails the system checks."""
        from microframe.conf import settings
        from microframe.contrib.config.backend import config_options
        from microframe.contrib.config.layers import MISSING
        from microframe.contrib.config.live import reloadable
        from microframe.contrib.config.reload import Refused, check_errors, checked, error_key

        if not self.options.get("force"):
            baseline = {error_key(m) for m in check_errors()}
            try:
                checked(name, value, baseline)
            except Refused as refusal:
                raise CommandError(
                    f"{name} refused: {refusal} (nothing stored; --force stores it anyway)"
                ) from None
        if value is MISSING:
            return
        reload = config_options().get("RELOAD") or []
        if name not in reload or not reloadable(name):
            self.stderr.write(
                f"{name} is not reloaded (CONFIG[\"RELOAD\"]): running instances of "
                f"{settings.SERVICE_NAME} apply it when they restart."
            )

    # -- actions -------------------------------------------------------------------------------

    async def do_get(self, backend: Any) -> None:
        layers = await backend.load()
        name = self.options["setting"]
        if name:
            from microframe.contrib.config.layers import MISSING

            value = self.effective(name, layers)
            if value is MISSING:
                raise CommandError(f"{name} is not a setting of {backend.service}.")
            self.stdout.write(_json(self.shown(value, name)))
            return
        for shared in (True, False):
            for setting, stored in sorted(layers.scope(shared).items()):
                where = "shared" if shared else backend.service
                self.stdout.write(
                    f"{setting} ({where}, revision {stored.revision}): "
                    f"{_json(self.shown(stored.value, setting), indent=None)}"
                )
        for key, why in sorted(layers.invalid.items()):
            self.stdout.write(f"{key}: invalid, {why} (not applied)")
        if not layers.settings() and not layers.invalid:
            self.stdout.write(f"No settings stored for {backend.service} (revision "
                              f"{layers.revision}).")

    async def do_set(self, backend: Any) -> None:
        from microframe.contrib.config.backend import check_setting_name, entry

        name = self.options["setting"]
        check_setting_name(name)
        text = sys.stdin.read() if self.options["json"] == "-" else self.options["json"]
        try:
            stored = entry(text, 0)
        except ValueError as err:
            raise CommandError(f"{name}: the value is {err}") from None
        raw = json.dumps(stored.value, sort_keys=True)
        await self.store(backend, name, raw)

    async def store(self, backend: Any, name: str, raw: str) -> None:
        from microframe.contrib.config.backend import entry

        layers = await backend.load()
        layers.scope(self.options["shared"])[name] = entry(raw, 0)
        self.check(name, self.effective(name, layers))
        revision = await backend.put(name, raw, shared=self.options["shared"])
        self.stdout.write(f"{name} stored for {self.scope} at revision {revision}.")

    async def do_unset(self, backend: Any) -> None:
        name = self.options["setting"]
        revision = await backend.delete(name, shared=self.options["shared"])
        if revision:
            self.stdout.write(f"{name} removed for {self.scope} at revision {revision}.")
        else:
            self.stdout.write(f"{name} was not stored for {self.scope}.")

    async def do_diff(self, backend: Any) -> None:
        from microframe.contrib.config.layers import MISSING, state

        layers = await backend.load()
        lines: list[str] = []
        for name in sorted(layers.settings()):
            local = state.local.get(name, MISSING)
            value = self.effective(name, layers)
            before = [] if local is MISSING else _json(self.shown(local, name)).splitlines()
            after = _json(self.shown(value, name)).splitlines()
            if before == after:
                continue
            lines.extend(difflib.unified_diff(
                before, after, f"{name} (local)", f"{name} (in force)", lineterm="", n=1
            ))
        self.stdout.write("\n".join(lines) if lines else "No stored setting changes a local one.")

    async def do_history(self, backend: Any) -> None:
        from microframe.contrib.config.backend import InvalidLayer, entry

        name = self.options["setting"]
        versions = await backend.history(name, shared=self.options["shared"])
        if not versions:
            self.stdout.write(f"{name} is not stored for {self.scope}.")
        for version in versions:
            if version.raw is None:
                text = "removed"
            else:
                try:
                    text = _json(self.shown(entry(version.raw, 0).value, name), indent=None)
                except InvalidLayer as err:
                    text = f"(invalid: {err}) {version.raw[:120]}"
            self.stdout.write(f"{version.revision}  {text}")

    async def do_rollback(self, backend: Any) -> None:
        name, revision = self.options["setting"], self.options["revision"]
        try:
            raw = await backend.value_at(name, revision, shared=self.options["shared"])
        except Exception as err:
            if "compacted" in str(err):
                raise CommandError(f"revision {revision} is compacted: etcd no longer keeps "
                                   "it") from None
            if "future revision" in str(err):
                raise CommandError(f"revision {revision} is ahead of the store's: see "
                                   f"config history {name}") from None
            raise
        if raw is None:
            raise CommandError(f"{name} was not stored for {self.scope} at revision {revision}.")
        await self.store(backend, name, raw)

    async def do_watch(self, backend: Any) -> None:
        layers = await backend.load()
        count, timeout = self.options["count"], self.options["timeout"]
        self.stdout.write(f"Watching the settings of {backend.service} at {backend.where()} "
                          f"from revision {layers.revision}.")
        self.stdout.flush()
        seen = 0
        deadline = time.monotonic() + timeout if timeout else None

        async def follow() -> None:
            nonlocal seen
            async for changes in backend.changes(layers.revision):
                for change in changes:
                    where = "shared" if change.shared else backend.service
                    if change.error is not None:
                        what = f"invalid: {change.error}"
                    elif change.entry is None:
                        what = "removed"
                    else:
                        what = _json(self.shown(change.entry.value, change.setting), indent=None)
                    self.stdout.write(f"{change.revision} {where} {change.setting} {what}")
                    self.stdout.flush()
                    seen += 1
                    if count and seen >= count:
                        return

        if deadline is None:
            await follow()
        else:
            try:
                await asyncio.wait_for(follow(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if count and seen < count:
                    raise CommandError(
                        f"{seen} of the {count} changes asked for came within {timeout:g} s"
                    ) from None
