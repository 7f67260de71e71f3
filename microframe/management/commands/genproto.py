"""``genproto``: compile the service's ``idl/**/*.proto`` into ``generate/``, write its typed
clients, ``app/router.py`` and the stubs of controllers that have none.

The work is :mod:`microframe.codegen`'s; the command reads its options, writes what is stale,
removes what is left over and reports (``--check``: writes nothing, exits 1 when stale).
"""

from __future__ import annotations

import importlib
import json
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
            "--openapi", metavar="PATH",
            help="Also write the OpenAPI 3.1 document of the routes the gateway serves (the "
                 "router's RPCs and their google.api.http rules) to PATH ('-': standard output).",
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
            target = options.get("openapi")
            if target and target != "-":
                path = Path(target)
                current = path.read_text(encoding="utf-8") if path.is_file() else None
                if current != self._openapi_text():
                    raise CommandError(f"{target} is stale; run genproto --openapi {target}.")
                self.stdout.write(f"{target} is up to date.\n")
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
        if options.get("openapi"):
            self._write_openapi(options["openapi"])

    def _write_openapi(self, target: str) -> None:
        """Write the document the gateway serves at /openapi.json, from the code just
        generated."""
        import sys

        text = self._openapi_text()
        if target == "-":
            sys.stdout.write(text)
            return
        Path(target).write_text(text, encoding="utf-8")
        operations = sum(len(item) for item in json.loads(text)["paths"].values())
        self.stdout.write(f"genproto: the OpenAPI document of {operations} operation(s) "
                          f"written to {target}.\n")

    def _openapi_text(self) -> str:
        from microframe.conf import settings
        from microframe.contrib.gateway.openapi import service_openapi
        from microframe.contrib.gateway.rules import TemplateError, routed_bindings
        from microframe.core.descriptors import LocalService

        if not getattr(settings, "ROOT_ROUTER", None):
            raise CommandError("--openapi needs the service's settings: its ROOT_ROUTER says "
                               "which RPCs the gateway serves.")
        importlib.invalidate_caches()  # the modules just written are imported below
        local = LocalService()
        try:
            document = service_openapi(routed_bindings(local.routes, local.pool))
        except TemplateError as err:
            raise CommandError(f"A google.api.http rule cannot be served: {err}") from err
        return json.dumps(document, indent=2) + "\n"

    @staticmethod
    def _service_package() -> str | None:
        from microframe.conf import settings

        module = getattr(settings, "SETTINGS_MODULE", None)
        return module.rpartition(".")[0] or None if module else None

    @staticmethod
    def _service_root() -> Path:
        from microframe.conf import settings

        return Path(getattr(settings, "SERVICE_ROOT", "."))
