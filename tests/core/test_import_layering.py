"""The import graph of ``tusbridge/``: no cycle, and dependencies pointing inward.

The core (the service, the write path, locking, the record, the stores) knows
no server and no protocol; server adapters (``tusbridge.gunicorn``,
``tusbridge.asgi``) plug into hooks the core exposes; the two protocols never
import each other, and only ``tusbridge.views`` knows both; no view talks to
Redis itself. Every import counts, including those made inside functions and
for type checking only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tusbridge"

CORE = (
    "tusbridge.service",
    "tusbridge.appending",
    "tusbridge.locking",
    "tusbridge.bodies",
    "tusbridge.offload",
    "tusbridge.stores",
    "tusbridge.record",
    "tusbridge.records",
    "tusbridge.data",
    "tusbridge.errors",
    "tusbridge.holders",
    "tusbridge.handover",
    "tusbridge.conf",
)
SERVER_SPECIFIC = ("tusbridge.gunicorn", "tusbridge.asgi", "gunicorn", "gevent", "uvicorn", "uvloop")
PROTOCOLS = ("tusbridge.tus", "tusbridge.chunked_upload", "tusbridge.views")
STORE_CLIENTS = ("redis", "boto3", "botocore")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (for ``from x import y``: ``x.y`` when that is a module, else ``x``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate) else target)
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("tusbridge"):
        return False
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules} | _imports(path) for name, path in modules.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


GRAPH = _graph()


def test_the_graph_is_read_from_every_module() -> None:
    assert {"tusbridge.service", "tusbridge.gunicorn.workers", "tusbridge.chunked_upload.handlers"} <= set(GRAPH)
    assert "tusbridge.locking" in GRAPH["tusbridge.appending"]  # relative imports resolve
    assert "tusbridge.gunicorn.keeping" in GRAPH["tusbridge.gunicorn.workers"]


def test_no_import_cycle() -> None:
    internal = {name: {i for i in imports if i in GRAPH and i != name} for name, imports in GRAPH.items()}
    # A package imports its own modules to re-export them: that is not a cycle back into it.
    for name, imports in internal.items():
        internal[name] = {i for i in imports if not (i.startswith(name + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(internal[name]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(internal):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _within(m, CORE)))
def test_the_core_imports_no_server_and_no_protocol(module: str) -> None:
    wrong = sorted(i for i in GRAPH[module] if _within(i, SERVER_SPECIFIC) or _within(i, PROTOCOLS))
    assert not wrong, f"{module} imports {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _within(m, PROTOCOLS)))
def test_protocols_import_no_store_client_and_not_each_other(module: str) -> None:
    assert not [i for i in GRAPH[module] if _within(i, STORE_CLIENTS)], f"{module} talks to a store client itself"
    if _within(module, ("tusbridge.tus",)):
        assert not [i for i in GRAPH[module] if _within(i, ("tusbridge.chunked_upload",))]
    if _within(module, ("tusbridge.chunked_upload",)):
        assert not [i for i in GRAPH[module] if _within(i, ("tusbridge.tus", "tusbridge.views"))]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if not _within(m, ("tusbridge.gunicorn",))))
def test_only_the_gunicorn_adapter_imports_gunicorn(module: str) -> None:
    assert not [i for i in GRAPH[module] if _within(i, ("gunicorn",))], f"{module} imports gunicorn"
