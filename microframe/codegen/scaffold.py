"""What genproto writes outside ``generate/``: the service's ``app/router.py`` and the stubs of
the controllers that have none (never changing what the user wrote)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from microframe.codegen.naming import HEADER, module_of
from microframe.codegen.services import ServiceInfo
from microframe.core.router import RpcKind
from microframe.utils.names import snake


def router_text(package: str, services: list[ServiceInfo]) -> str:
    """``app/router.py``: every RPC of every service bound to ``controller/<service>.<rpc>``."""
    modules = sorted({module_of(s.proto) for s in services})
    lines = [
        HEADER.format(source="the protos of idl/").rstrip("\n"),
        '"""The routes of the service: every RPC bound to its controller."""',
        "",
        "from microframe.core.router import rpc",
        "",
    ]
    controllers = sorted({snake(s.name) for s in services})
    lines += [f"from {package}.controller import {c}" for c in controllers]
    for module in modules:
        parent, _, name = module.rpartition(".")
        lines.append(f"from {package}.generate{'.' + parent if parent else ''} import {name}")
    lines.append("")
    for s in services:
        module = module_of(s.proto).rpartition(".")[2]
        lines.append(f'{s.name} = {module}.DESCRIPTOR.services_by_name["{s.name}"]')
    lines += ["", "routes = ["]
    for s in services:
        for method, _, _ in s.methods:
            lines.append(f'    rpc({s.name}, "{method}", {snake(s.name)}.{snake(method)}),')
    lines.append("]")
    return "\n".join(lines) + "\n"


def stub_text(
    service: ServiceInfo, method: str, client_streaming: bool, server_streaming: bool
) -> str:
    request = "requests" if client_streaming else "request"
    kind = RpcKind.of(client_streaming, server_streaming).description
    body = ['    raise Unimplemented("' + f'{service.name}.{method} is not implemented yet")']
    if server_streaming:
        body.append("    yield  # a server-streaming controller is an async generator")
    return (
        f"async def {snake(method)}(ctx, {request}):\n"
        f'    """{service.name}.{method} ({kind}). '
        'Written by genproto as a stub: yours to edit."""\n'
        + "\n".join(body) + "\n"
    )


def controller_plan(
    controllers: Path, services: list[ServiceInfo], package: str | None = None
) -> tuple[dict[Path, str], list[str]]:
    """New contents of the controller modules that lack a function for an RPC (stubs appended,
    their import added at the top if missing, nothing of the user's changed), and the functions
    of RPCs no longer in the protos."""
    import ast

    plans: dict[Path, str] = {}
    orphans: list[str] = []
    for service in services:
        path = controllers / f"{snake(service.name)}.py"
        existing = path.read_text(encoding="utf-8") if path.exists() else None
        defined: set[str] = set()
        if existing is not None:
            tree = ast.parse(existing, filename=str(path))
            functions = (ast.FunctionDef, ast.AsyncFunctionDef)
            defined = {n.name for n in tree.body if isinstance(n, functions)}
        wanted = {snake(m): (m, cs, ss) for m, cs, ss in service.methods}
        missing = [wanted[name] for name in wanted if name not in defined]
        orphans += [
            f"{path.name}: {name}() (no RPC of {service.name} is named so: a helper, or the "
            "controller of an RPC renamed or removed)"
            for name in sorted(defined - set(wanted)) if not name.startswith("_")
        ]
        if not missing:
            continue
        stubs = "\n\n".join(stub_text(service, *m) for m in missing)
        if existing is None:
            text = (f'"""Controllers of {service.name} ({service.proto}): '
                    'the business code of each RPC."""\n\n'
                    f"{UNIMPLEMENTED_IMPORT}\n\n\n" + stubs)
        else:
            own = (package or controllers.parent.name).partition(".")[0]
            text = with_unimplemented_import(existing, own).rstrip("\n") + "\n\n\n" + stubs
        plans[path] = text
    return plans, orphans


#: The import of the stubs' exception. ``noqa: F401``: the module stays lint-clean once every
#: stub is implemented and nothing raises it any more.
UNIMPLEMENTED_NOQA = "# noqa: F401 - raised by the stubs genproto writes"
UNIMPLEMENTED_IMPORT = f"from microframe import Unimplemented  {UNIMPLEMENTED_NOQA}"


def _section(node: Any, package: str) -> int:
    """The isort section of an import statement, as a service sees it: 0 ``__future__``, 1 the
    standard library, 2 third-party (microframe too), 3 the service's own package, 4 relative."""
    import ast

    if isinstance(node, ast.ImportFrom):
        if node.level:
            return 4
        names = [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    top = names[0].partition(".")[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    return 3 if top == package else 2


def _sort_key(name: str) -> tuple[int, str]:
    """isort's order of imported names (``order-by-type``): CONSTANTS, Classes, then the rest."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name.lower()


def with_unimplemented_import(text: str, package: str) -> str:
    """``text`` (a controller module) importing ``Unimplemented`` from microframe, in the import
    block at its top, where isort (ruff's ``I`` rules) and pycodestyle accept it: added to its
    ``from microframe import ...`` when it has one, else put in order among its third-party
    imports, else in a section of its own after the standard library's. Unchanged when the
    module imports the name already."""
    import ast

    tree = ast.parse(text)
    body = list(tree.body)
    head = body[0] if body else None
    docstring = isinstance(head, ast.Expr) and isinstance(head.value, ast.Constant) \
        and isinstance(head.value.value, str)
    start = 1 if docstring else 0
    block: list[ast.Import | ast.ImportFrom] = []
    for statement in body[start:]:
        if not isinstance(statement, ast.Import | ast.ImportFrom):
            break
        block.append(statement)
    for found in ast.walk(tree):
        if isinstance(found, ast.ImportFrom) and found.module == "microframe" and found.level == 0 \
                and any((a.asname or a.name) == "Unimplemented" for a in found.names):
            return text
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"

    def span(node: ast.stmt) -> tuple[int, int]:
        return node.lineno - 1, node.end_lineno or node.lineno

    def of_microframe(node: ast.stmt) -> bool:
        return isinstance(node, ast.ImportFrom) and node.module == "microframe" and node.level == 0

    def aliased(node: ast.Import | ast.ImportFrom) -> bool:
        return any(a.asname is not None for a in node.names)

    # isort keeps ``from microframe import A as B`` (and ``*``) apart from the statement of
    # plain names.
    existing = next((n for n in block if of_microframe(n) and not aliased(n)
                     and all(a.name != "*" for a in n.names)), None)
    if existing is not None:
        first, last = span(existing)
        source = "".join(lines[first:last])
        if "#" not in source and "\\" not in source:
            members = sorted([*(a.name for a in existing.names), "Unimplemented"], key=_sort_key)
            rows = [f"    {m}," + (f"  {UNIMPLEMENTED_NOQA}" if m == "Unimplemented" else "")
                    for m in members]
            lines[first:last] = ["from microframe import (\n", *(r + "\n" for r in rows), ")\n"]
            return "".join(lines)
    new = UNIMPLEMENTED_IMPORT + "\n"
    third = [n for n in block if _section(n, package) == 2]
    if third:
        # Straight imports first, then from-imports, each sorted by module (ruff's default).
        # (statements of one module in the order of their first names)
        later = [n for n in third if isinstance(n, ast.ImportFrom) and (
            (n.module or "").lower() > "microframe"
            or (of_microframe(n) and _sort_key(n.names[0].name) > _sort_key("Unimplemented")))]
        if later:
            at = span(later[0])[0]
        else:
            at = span(third[-1])[1]
        lines.insert(at, new)
        return "".join(lines)
    after = [n for n in block if _section(n, package) > 2]
    before = [n for n in block if _section(n, package) < 2]
    if after:
        lines.insert(span(after[0])[0], new + "\n")
    elif before:
        lines.insert(span(before[-1])[1], "\n" + new)
    else:
        at = span(body[0])[1] if start else 0
        lines.insert(at, ("\n" if start else "") + new + ("\n\n" if not start else ""))
    return "".join(lines)
