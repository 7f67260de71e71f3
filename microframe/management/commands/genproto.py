"""``genproto``: compile the service's ``idl/**/*.proto`` into ``generate/``, write its typed
clients, ``app/router.py`` and the stubs of controllers that have none.

The work is :mod:`microframe.codegen`'s; the command reads its options, writes what is stale,
removes what is left over and reports (``--check``: writes nothing, exits 1 when stale).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from microframe.codegen import (
    SUFFIXES,
    ProtoError,
    controller_plan,
    generate,
    router_text,
    same,
)
from microframe.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Compile the service's idl/**/*.proto into generate/ (messages, stubs, .pyi) with "
        "grpcio-tools' protoc; --check fails when generate/ is stale."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--idl", help="Directory of the .proto files (default: <service root>/idl)."
        )
        parser.add_argument(
            "--out",
            help="Directory of the generated package (default: <service root>/generate).",
        )
        parser.add_argument(
            "--check", action="store_true", help="Write nothing; exit 1 when generate/ is stale."
        )
        parser.add_argument(
            "--package",
            help="The service's Python package, for app/router.py and the controller stubs next "
                 "to generate/ (default: the package of the settings module; none with --idl: "
                 "the protos are only compiled).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        root = self._service_root() if not (options["idl"] and options["out"]) else Path(".")
        idl = Path(options["idl"]) if options["idl"] else root / "idl"
        out = Path(options["out"]) if options["out"] else root / "generate"
        if not idl.is_dir():
            raise CommandError(f"No idl directory at {idl}.")
        idl, out = idl.resolve(), out.resolve()
        try:
            wanted, services = generate(idl)
        except ProtoError as err:
            raise CommandError(str(err)) from err
        package = options["package"] or (self._service_package() if not options["idl"] else None)
        extra: dict[Path, str] = {}  # absolute path -> content, outside generate/
        orphans: list[str] = []
        if package and services:
            root_dir = out.parent
            extra[root_dir / "app" / "router.py"] = router_text(package, services)
            for init in (root_dir / "app" / "__init__.py", root_dir / "controller" / "__init__.py"):
                if not init.exists():
                    extra[init] = ""
            stubs, orphans = controller_plan(root_dir / "controller", services, package)
            extra.update(stubs)
        loose = bool(options["check"])
        extra_stale = sorted(
            str(p) for p, text in extra.items() if not same(p, text, ignore_versions=loose)
        )
        stale = sorted(
            str(p) for p, text in wanted.items() if not same(out / p, text, ignore_versions=loose)
        )
        leftover = sorted(
            str(p.relative_to(out)) for p in out.rglob("*")
            if p.is_file() and p.name.endswith(SUFFIXES) and p.relative_to(out) not in wanted
        ) if out.is_dir() else []
        for orphan in orphans:
            self.stderr.write(f"genproto: a controller without its RPC (left as it is): {orphan}\n")
        if options["check"]:
            if stale or leftover or extra_stale:
                lines = [f"  out of date or missing: {p}" for p in stale + extra_stale]
                lines += [f"  no longer generated: {p}" for p in leftover]
                raise CommandError(f"{out} is stale; run genproto:\n" + "\n".join(lines))
            self.stdout.write(f"{out} is up to date ({len(wanted)} files).\n")
            return
        for path in stale:
            target = out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(wanted[Path(path)], encoding="utf-8")
        for path in leftover:
            (out / path).unlink()
        for path in extra_stale:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(extra[Path(path)], encoding="utf-8")
        cache = out / "__pycache__"
        if stale and cache.is_dir():
            shutil.rmtree(cache, ignore_errors=True)
        self.stdout.write(
            f"genproto: {len(stale) + len(extra_stale)} file(s) written, {len(leftover)} removed, "
            f"{len(wanted) - len(stale)} unchanged in {out}.\n"
        )

    @staticmethod
    def _service_package() -> str | None:
        from microframe.conf import settings

        module = getattr(settings, "SETTINGS_MODULE", None)
        return module.rpartition(".")[0] or None if module else None

    @staticmethod
    def _service_root() -> Path:
        from microframe.conf import settings

        return Path(getattr(settings, "SERVICE_ROOT", "."))
