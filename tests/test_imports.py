"""Every module imports by itself, and the import graph has no cycle (issue 19).

The graph is read from the source with `ast`: module-level imports, those under
`if TYPE_CHECKING:` included, since a cycle hidden from the interpreter that way is still
one. Imports inside functions are lazy on purpose (optional libraries, the API's method
registration) and are only held to two rules: no module but the entry points reaches
coordinator.server, and the agent never imports the coordinator.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "coordinator", "shared")
# Entry points that start the server, and the server itself.
MAY_IMPORT_SERVER = {"careline.coordinator.server", "careline.coordinator.bootstrap",
                     "careline.coordinator.cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if "migrations" not in parts:  # alembic scripts, run by alembic only
                found[".".join(["careline", *parts])] = path
    return found


MODULES = _modules()


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements run at import: the body and its if/try blocks (TYPE_CHECKING ones too)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody
            stack += [s for handler in node.handlers for s in handler.body]


def _imports(name: str, nodes: Iterator[ast.AST]) -> set[str]:
    """The careline modules these statements import (`from pkg import mod` counts as mod)."""
    is_package = MODULES[name].name == "__init__.py"
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[:len(name.split(".")) - node.level + is_package]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    out.add(f"{base}.{alias.name}")
                elif base in MODULES:
                    out.add(base)
    out.discard(name)
    return out


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = _module_level(tree) if module_level_only else ast.walk(tree)
        graph[name] = _imports(name, iter(nodes))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle, as the modules along it; [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_graph_sees_the_imports_it_checks() -> None:
    """The checks below are only as good as the graph: it finds known edges."""
    graph = _graph(module_level_only=True)
    assert "careline.coordinator.hub" in graph["careline.coordinator.server"]
    assert "careline.coordinator.services" in graph["careline.coordinator.api"]  # TYPE_CHECKING
    assert "careline.shared.protocol" in graph["careline.coordinator.hub"]  # `from x import y`
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    assert _cycle(_graph(module_level_only=True)) == []


def test_only_the_entry_points_import_the_server() -> None:
    graph = _graph(module_level_only=False)
    importers = {m for m, targets in graph.items() if "careline.coordinator.server" in targets}
    assert importers <= MAY_IMPORT_SERVER, importers - MAY_IMPORT_SERVER


def test_the_agent_never_imports_the_coordinator() -> None:
    graph = _graph(module_level_only=False)
    leaks = {m: sorted(t for t in targets if t.startswith("careline.coordinator"))
             for m, targets in graph.items() if m.startswith("careline.agent.")}
    assert {m: t for m, t in leaks.items() if t} == {}


# Run in a fresh interpreter: imports each module with nothing imported before it but what
# it imports itself, and says which failed and why.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=3)
    for loaded in set(sys.modules) - before:  # the next module starts from scratch again
        if loaded.startswith("careline"):
            del sys.modules[loaded]
print(json.dumps(failed))
"""


def test_every_module_imports_alone() -> None:
    names = sorted(m for m in MODULES if not m.endswith(".__main__"))  # those run the CLI
    assert len(names) > 90
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True,
                         text=True, timeout=240, check=True)
    assert json.loads(out.stdout) == {}
