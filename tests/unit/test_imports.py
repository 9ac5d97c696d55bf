"""The import graph of Fleet's packages: no cycles between modules, and one direction between packages.

Why a test: cycles hide until an import order changes (``scraper.cli.app`` ⇄ ``scraper.cli.demo``, ``scraper`` ⇄
``middlewares`` were real ones), and the layering (middlewares/, pipelines/ and settings/ build on
scraper, never the reverse) is what lets scraper be read, tested and reorganised on its own. Every
``import`` counts: top-level, inside functions (lazy) and under ``TYPE_CHECKING`` alike, since each is a
dependency someone has to reason about. Read from the source with ast: nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scraper", "middlewares", "pipelines", "settings")
# top-level package -> the packages it must never import
FORBIDDEN = {"scraper": {"middlewares", "pipelines", "settings"}}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module of ours that ``name`` refers to: itself, or its longest prefix that is one of ours."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            # ``from a import b``: the submodule a.b when there is one, else the module a
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
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


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = import_graph()
    assert "scraper.worker.runtime" in graph["scraper.worker.scheduler"]  # top level
    assert "scraper.worker.render" in graph["scraper.worker.catalog"]  # inside a function
    assert "scraper.worker.ledger" in graph["scraper.worker.ports"]  # under TYPE_CHECKING
    assert "scraper.infra.log" in graph["scraper.worker.alerts"]  # ``from scraper import log``


def test_no_import_cycles_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_packages_import_in_one_direction() -> None:
    graph = import_graph()
    packages: dict[str, set[str]] = {p: set() for p in PACKAGES}
    wrong: list[str] = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other == top:
                continue
            packages[top].add(other)
            if other in FORBIDDEN.get(top, ()):
                wrong.append(f"{module} imports {target}")
    assert wrong == [], "scraper must not import middlewares, pipelines or settings"
    assert cycles(packages) == []


def subpackage_graph() -> dict[str, set[str]]:
    """scraper's subpackages (queue, store, worker, cli, …) and which of the others each imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        parts = module.split(".")
        if parts[0] != "scraper" or len(parts) < 2:
            continue
        edges = graph.setdefault(parts[1], set())
        for target in targets:
            tparts = target.split(".")
            if tparts[0] == "scraper" and len(tparts) > 1 and tparts[1] != parts[1]:
                edges.add(tparts[1])
    return graph


def test_scraper_subpackages_have_no_cycles() -> None:
    """The layout is the architecture: cli builds on worker, worker on queue and store, never back."""
    graph = subpackage_graph()
    assert cycles(graph) == []
    assert "cli" not in set().union(*(graph[p] for p in graph if p != "cli"))  # nothing imports the CLI
    for low in ("policy", "queue", "store"):
        assert not graph[low] & {"worker", "cli", "devtools"}, f"scraper.{low} must not import the worker or the CLI"


def test_every_module_declares_its_public_names() -> None:
    missing = [m for m, p in _modules().items() if m.startswith("scraper.") and "__all__" not in p.read_text()
               and not p.name.startswith("__main__")]
    assert missing == []
