"""The layout of ``flows/`` (docs/layout.md), read from the source: no
module imports another in a circle, each part imports only the parts below
it, only the engine, the worker and the operator layer talk to the store,
and psycopg stays in the store and the connection setup."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "flows"

# The parts of docs/layout.md, from the bottom: each imports only itself
# and the parts before it. A module, or a prefix ending in "." for a package.
PARTS: list[tuple[str, set[str]]] = [
    ("the core", {"flows.errors", "flows.extras", "flows.sharding", "flows.ids", "flows.codec", "flows.history",
                  "flows.definitions", "flows.context", "flows.continuation", "flows.threads", "flows.wakeups"}),
    ("the store", {"flows.store", "flows.store."}),
    ("the operator layer", {"flows.ops", "flows.ops.", "flows.migrate"}),
    ("metrics and explanations", {"flows.metrics", "flows.explain", "flows.replayer"}),
    ("the engine", {"flows.engine", "flows.async_engine", "flows.schedules"}),
    ("the worker", {"flows.worker", "flows.steps", "flows.activity_runner", "flows.children", "flows.heartbeat"}),
    ("the outside", {"flows", "flows.cli", "flows.console", "flows.console.", "flows.supervisor", "flows.supervisor.",
                     "flows.embedded"}),
]
TALK_TO_THE_STORE = {"the store", "the operator layer", "the engine", "the worker"}
PSYCOPG_CALLERS = {"flows.migrate", "flows.codec"}  # the runner, and the JSON dumper psycopg calls


def part(module: str) -> int:
    """The index in PARTS of the part ``module`` belongs to."""
    for index, (_, names) in enumerate(PARTS):
        if module in names or any(n.endswith(".") and module.startswith(n) for n in names):
            return index
    raise AssertionError(f"{module} is in no part: place it in docs/layout.md and in PARTS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The modules of flows that ``name`` imports, and psycopg if it does,
    each with a line: at any depth (an import inside a function, or under
    TYPE_CHECKING, is a dependency all the same). ``from flows import
    codec`` names flows.codec; ``from flows import Engine`` the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        top = target.split(".")[0]
        if top in ("psycopg", "psycopg_pool"):
            found.setdefault("psycopg", line)
            return
        if top != "flows":
            return
        while target not in modules:
            target = target.rpartition(".")[0]
        if target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> the modules of flows it imports (and psycopg), with the line."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph (as a path that ends where it began), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, {})):
            if dep not in graph:  # psycopg
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "flows.store.client" in graph["flows.ops.workflows"]  # from flows.store import client as ...
    assert "flows.supervisor.child" in graph["flows.supervisor.arbiter"]  # from flows.supervisor import child
    assert "flows.worker" in graph["flows.supervisor.child"]  # an import inside a function
    assert "flows" in graph["flows.cli"]  # from flows import __version__: the package itself
    assert _cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_module_of_flows_imports_another_in_a_circle() -> None:
    assert _cycle(import_graph()) is None


def test_each_part_imports_only_itself_and_the_parts_before_it() -> None:
    wrong = [f"{name} ({PARTS[part(name)][0]}) imports {dep} ({PARTS[part(dep)][0]}), line {line}"
             for name, deps in import_graph().items() for dep, line in deps.items()
             if dep != "psycopg" and part(dep) > part(name)]
    assert not wrong, "\n".join(wrong)


def test_only_the_engine_the_worker_and_the_operator_layer_import_the_store() -> None:
    callers = {name for name, deps in import_graph().items()
               if any(d == "flows.store" or d.startswith("flows.store.") for d in deps)}
    assert callers, "the graph sees no import of the store"
    outside = {c for c in callers if PARTS[part(c)][0] not in TALK_TO_THE_STORE}
    assert not outside, outside


def test_the_supervisor_the_cli_and_the_console_never_import_the_store() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("flows.supervisor", "flows.console")) or name == "flows.cli":
            reached = {d for d in deps if d == "flows.store" or d.startswith("flows.store.")}
            assert not reached, f"{name} imports {reached}"


def test_psycopg_is_imported_only_by_the_store_and_the_connection_setup() -> None:
    graph = import_graph()
    users = {name for name, deps in graph.items() if "psycopg" in deps}
    assert {u for u in users if not u.startswith("flows.store")} <= PSYCOPG_CALLERS
