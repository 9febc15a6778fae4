"""The layout stays true: read from the source (every import counts, including those under
TYPE_CHECKING and inside functions), llmctl's modules form no import circle, core/ imports
nothing above it and holds only what the CLI side (cli, client, worker) and the daemon share,
and no class grows past MAX_CLASS_LINES (a class that long has several jobs)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "llmctl"
MAX_CLASS_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The llmctl modules `name` imports. `from pkg import sub` counts as an import of the
    submodule only (the package's __init__ runs first either way, as for every import of
    anything inside it)."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            subs = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            found.update(subs or {base})
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in known and m != name}


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(imports_of(name, path)) for name, path in modules().items()}


def circles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def reachable(starts: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph()[name])
    return seen


def test_the_reader_sees_imports_under_type_checking_and_in_functions() -> None:
    """The check itself: a circle hidden behind TYPE_CHECKING or a lazy import is found."""
    edges = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}),
             "d": frozenset({"a"})}
    assert circles(edges) == [["a", "b", "c"]]
    main = imports_of("llmctl.daemon.processes.main",
                           modules()["llmctl.daemon.processes.main"])
    assert "llmctl.daemon.processes.proxy_worker" in main  # imported inside a function


def test_no_import_circles() -> None:
    assert circles(graph()) == []


def test_core_imports_nothing_above_it() -> None:
    up = {name: sorted(m for m in deps if not m.startswith("llmctl.core"))
          for name, deps in graph().items() if name.startswith("llmctl.core")}
    assert {name: deps for name, deps in up.items() if deps} == {}


def test_core_holds_only_what_the_cli_and_the_daemon_share() -> None:
    names = modules()
    # the CLI side: the command, its HTTP client, and `llmctl worker` (which runs apart)
    cli = reachable([m for m in names if m.startswith(("llmctl.cli", "llmctl.client",
                                                       "llmctl.worker"))])
    daemon = reachable([m for m in names if m.startswith("llmctl.daemon")])
    core = {m for m in names if m.startswith("llmctl.core.")}
    assert sorted(core - cli) == [], "used only by the daemon: move it under llmctl/daemon/"
    assert sorted(core - daemon) == [], "used only by the CLI: move it under llmctl/cli/"


@pytest.mark.parametrize("name", sorted(m for m in modules() if m.startswith("llmctl.daemon.")
                                        and modules()[m].name == "__init__.py"))
def test_every_daemon_subpackage_says_what_it_owns(name: str) -> None:
    assert ast.get_docstring(ast.parse(modules()[name].read_text())), name


def test_no_class_is_longer_than_the_limit() -> None:
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert long == {}
