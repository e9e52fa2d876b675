"""The house rules on imports: every module imports, data flows one way (no import circles), records import no views.

The import graph is built from the source with :mod:`ast`: every ``import``/``from ... import`` of a failtrace module,
at module level or inside a function (a lazy import still ties two modules together), except those under
``if TYPE_CHECKING:`` (they never run). Importing ``a.b`` is an edge to ``a.b`` only, as in Python itself a package's
``__init__`` is not re-entered by its submodules.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import failtrace

ROOT = Path(failtrace.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("failtrace",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            stack.append(child)
    return out


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The failtrace modules one import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        pkg = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:
            out.add(sub)
        elif base in MODULES:
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = set().union(*(_targets(name, n) for n in _runtime_imports(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_graph_sees_lazy_imports_but_not_type_checking_ones() -> None:
    graph = import_graph()
    assert "failtrace.graph.prune" in graph["failtrace.graph.record"]  # a lazy import inside a method counts
    assert "failtrace.graph.record" not in graph["failtrace.graph.prune"]  # TYPE_CHECKING only
    assert "failtrace.attribution.record" in graph["failtrace.views.common"]


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


# The stages in the order data flows through them (docs/ARCHITECTURE.md). ``cases`` builds a case by calling the
# attribution, graph and analysis stages, so in imports it comes after them; attribution and graph are one rank.
STAGES = ("benchmarks", "failures", "attribution|graph", "analysis", "cases", "training", "scale", "report|serve",
          "cli")


def test_a_stage_imports_a_later_stage_only_for_its_records() -> None:
    """Data flows one way: a stage imports earlier stages, and of a later stage only the records it hands on (a
    ``record`` module: the case records analysis reads, the token record a pair shows). The side layers (store,
    models, lrp, views and the top-level modules) are not ranked."""
    rank = {pkg: i for i, names in enumerate(STAGES) for pkg in names.split("|")}
    against = []
    for mod, deps in import_graph().items():
        here = (mod.split(".") + [""])[1]
        for dep in deps:
            there = (dep.split(".") + [""])[1]
            if here in rank and there in rank and rank[there] > rank[here] and not dep.endswith(".record"):
                against.append(f"{mod} -> {dep}")
    assert not against, against


def test_the_stage_order_check_sees_a_planted_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    real = import_graph()
    planted = {**real, "failtrace.failures.pairs": real["failtrace.failures.pairs"] | {"failtrace.cases.build"}}
    monkeypatch.setitem(globals(), "import_graph", lambda: planted)
    with pytest.raises(AssertionError, match="failtrace.failures.pairs -> failtrace.cases.build"):
        test_a_stage_imports_a_later_stage_only_for_its_records()


@pytest.mark.parametrize("record", ["failtrace.attribution.record", "failtrace.graph.record"])
def test_records_import_no_views_or_exports(record: str) -> None:
    graph = import_graph()
    seen, stack = set(), [record]
    while stack:  # everything the record pulls in, directly or not
        for dep in graph[stack.pop()] - seen:
            seen.add(dep)
            stack.append(dep)
    banned = {m for m in seen if m.startswith(("failtrace.views", "failtrace.report", "failtrace.cli"))
              or m in ("failtrace.graph.export", "failtrace.graph.metrics")}
    assert not banned, f"{record} reaches renderers/exports: {sorted(banned)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not m.endswith(".__main__")))  # __main__ runs the CLI
def test_every_module_imports(name: str) -> None:
    """Each module imports on its own, says what it is in a docstring (the house rule), and every name its
    ``__all__`` exports exists (a stale export is an ImportError for ``from ... import *`` users)."""
    module = importlib.import_module(name)
    assert len((module.__doc__ or "").split()) >= 3, f"{name} has no docstring saying what it is"
    assert [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)] == []


def test_library_never_imports_the_test_scaffolding() -> None:
    """Test scaffolding lives outside the library (testkit/, package failtrace_testkit): no failtrace module may
    import it, lazily or not, and the failtrace package holds no module of it."""
    importers = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))):  # any, even typing
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "failtrace_testkit" for m in mods):
                importers.append(name)
    assert not importers, f"the library imports the test scaffolding: {sorted(set(importers))}"
    assert not any(m.startswith("failtrace.testing") for m in MODULES)


def test_house_size_rules() -> None:
    """No library module over 400 lines (Python, and the explorer's and the report's own scripts and styles), no
    Python line over 120 characters in the library, its tests, the test kit, scripts or benchmarks: a module that
    grows past it is split by what it does (docs/ARCHITECTURE.md names each part)."""
    repo = ROOT.parent.parent
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in sorted(ROOT.rglob("*"))
             if p.suffix in (".py", ".js", ".css")}
    long_modules = [f"{p.relative_to(repo)}: {n} lines" for p, n in sizes.items() if n > 400]
    assert not long_modules, long_modules
    folders = [ROOT, repo / "tests", repo / "testkit", repo / "scripts", repo / "perf"]
    long_lines = [f"{p.relative_to(repo)}:{i}" for folder in folders if folder.is_dir()
                  for p in sorted(folder.rglob("*.py"))
                  for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long_lines, long_lines
