"""The project's layers, read from its imports: no import cycle, no import against the layers.

Every module under src/quantbench is parsed (not imported); every `import` and `from ...
import` of a project module counts, at module level, inside functions and under
`if TYPE_CHECKING:` alike, with relative imports resolved and `from package import name`
counted as an import of the submodule where `name` is one. Importing `a.b.c` also runs the
packages `a.b` and `a`, so those count too, except a module's own enclosing packages (a
package's `__init__` importing its submodules is how packages work, not a cycle).

Registries that name modules in strings ("quantbench.metrics.size:SizeMetric") are not
imports and are not followed here: they are loaded on demand by design.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "quantbench"

LAYERS: dict[str, tuple[str, ...]] = {
    # What the layer holds (module names, or prefixes ending in "." or "_"), lowest first.
    "base": ("quantbench.errors", "quantbench.units", "quantbench.registry"),
    "storage": ("quantbench.store", "quantbench.remote", "quantbench.jsonl"),
    "catalogue": ("quantbench.models", "quantbench.schemes", "quantbench.schemes."),
    "schema": ("quantbench.results",),
    "analysis": (
        "quantbench.stats",
        "quantbench.stats.",
        "quantbench.stats_",
        "quantbench.recommend",
    ),
    "report": ("quantbench.report", "quantbench.report."),
}
"""Layers below the pipeline. `base`: errors every layer may raise, display units, the
registry helper. `storage`: content-keyed stage folders, fsspec locations, atomic writes
(the report writes its files with them).
`catalogue`: what a model and a scheme are (names, shapes, options); it runs no stage.
`schema`: the results records, with no I/O. `analysis`: statistics and the recommendation,
pure functions of records. `report`: every file and table built from saved results.
Everything else is the pipeline (study, plan, evaluate, quantize, process, executors,
backends, metrics, tasks, config, cli, ...), which may import any layer."""

PIPELINE = "pipeline"

MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "storage": frozenset({"base", "storage"}),
    "catalogue": frozenset({"base", "storage", "catalogue"}),
    "schema": frozenset({"base", "schema"}),
    "analysis": frozenset({"base", "schema", "analysis"}),
    "report": frozenset({"base", "storage", "catalogue", "schema", "analysis", "report"}),
    PIPELINE: frozenset({*LAYERS, PIPELINE}),
}
"""The layers each layer may import. The schema does no I/O, so it may not import storage;
the analysis works on records, not files; the report imports nothing from the pipeline."""


@dataclass(frozen=True)
class Edge:
    """`importer` imports `imported` (both project modules) at `line` of the importer."""

    importer: str
    imported: str
    line: int


def project_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, whether it is a package's __init__) for every module of
    `package` under `root`."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _enclosing(name: str) -> list[str]:
    """The packages that importing `name` runs first: `a.b.c` -> ["a", "a.b"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _known(name: str, modules: Mapping[str, object]) -> str | None:
    """`name` itself if it is a project module, else its closest project ancestor
    (`quantbench.x.attribute` -> `quantbench.x`), else None (not the project's)."""
    while name:
        if name in modules:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def imports_of(
    name: str, source: str, is_package: bool, modules: Mapping[str, object]
) -> list[Edge]:
    """Every import of a project module by the module `name` (its source text), wherever in
    the file it is, with the enclosing packages each import runs."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in modules else base, node.lineno))
    own_packages = set(_enclosing(name))
    edges: dict[str, Edge] = {}
    for imported, line in found:
        target = _known(imported, modules)
        if target is None:
            continue
        for module in [*_enclosing(target), target]:
            if module in modules and module != name and module not in own_packages:
                edges.setdefault(module, Edge(name, module, line))
    return list(edges.values())


def import_graph(root: Path = SOURCE, package: str = PACKAGE) -> list[Edge]:
    modules = project_modules(root, package)
    return [
        edge
        for name, (path, is_package) in modules.items()
        for edge in imports_of(name, path.read_text(), is_package, modules)
    ]


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """One shortest cycle (`[a, b, ..., a]`) through each strongly connected group of
    modules; empty when the imports form no cycle."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_cycle(graph, group) for group in sorted(groups)]


def _shortest_cycle(graph: Mapping[str, set[str]], group: list[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph[node] & members):
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    raise AssertionError(f"{group} is not a cycle")


def layer_of(module: str) -> str:
    for layer, members in LAYERS.items():
        for member in members:
            if module == member or (member[-1] in "._" and module.startswith(member)):
                return layer
    return PIPELINE


def breaches(edges: Iterable[Edge]) -> list[str]:
    """Each import against `MAY_IMPORT`, as `importer (layer) -> imported (layer), line N`."""
    return [
        f"{e.importer} ({layer_of(e.importer)}) -> {e.imported} ({layer_of(e.imported)}), "
        f"line {e.line}"
        for e in sorted(edges, key=lambda e: (e.importer, e.imported))
        if layer_of(e.imported) not in MAY_IMPORT[layer_of(e.importer)]
    ]


# --- the project --------------------------------------------------------------------------


def test_no_import_cycle_between_project_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_import_respects_the_layers() -> None:
    found = breaches(import_graph())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_graph_sees_the_imports_it_must_see() -> None:
    """The walk finds function-level imports and enclosing packages (a walk that found
    nothing would pass the two tests above)."""
    edges = {(e.importer, e.imported) for e in import_graph()}
    assert ("quantbench.cli", "quantbench.study") in edges  # inside a command function
    assert ("quantbench.quantize", "quantbench.process") in edges  # the enclosing package
    assert ("quantbench.process.workers", "quantbench.process.forkserver") in edges
    assert not any(a == b for a, b in edges)
    assert ("quantbench.process.workers", "quantbench.process") not in edges  # its own package
    every_layer = {layer_of(name) for name in project_modules(SOURCE, PACKAGE)}
    assert every_layer == set(MAY_IMPORT)


# --- the checker on planted faults --------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / "quantbench" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_cycle_through_a_function_level_relative_import_is_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from quantbench import b\n",
            "b.py": "def f():\n    from . import c\n",
            "c.py": "import quantbench.a.thing\n",
            "d.py": "from quantbench.a import x\n",
        },
    )
    found = cycles(import_graph(root))
    assert found == [["quantbench.a", "quantbench.b", "quantbench.c", "quantbench.a"]]


def test_a_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "p/__init__.py": "from quantbench.p import inner\n",
            "p/inner.py": "from quantbench import q\n",
            "q.py": "from quantbench.p.other import thing\n",
            "p/other.py": "",
        },
    )
    assert cycles(import_graph(root)) == [
        ["quantbench.p", "quantbench.p.inner", "quantbench.q", "quantbench.p"]
    ]


def test_a_report_importing_the_pipeline_and_a_schema_doing_io_are_breaches(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "report/__init__.py": "",
            "report/table.py": "def f():\n    from quantbench.study import run\n",
            "results.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from quantbench.store import write\n",
            "study.py": "from quantbench.report import table\n",
            "store.py": "",
        },
    )
    assert breaches(import_graph(root)) == [
        "quantbench.report.table (report) -> quantbench.study (pipeline), line 2",
        "quantbench.results (schema) -> quantbench.store (storage), line 3",
    ]
    assert cycles(import_graph(root)) == [
        ["quantbench.report.table", "quantbench.study", "quantbench.report.table"]
    ]


LAZY_COMMAND_IMPORTS = {"quantbench.cli"}
"""The entry point imports each command's modules when that command runs, so `quantbench
--help` and `--version` start without loading the pipeline (the one deliberate exception)."""


def function_level_project_imports(root: Path = SOURCE, package: str = PACKAGE) -> list[str]:
    """`module:line` of every import of a project module inside a function."""
    found = []
    for name, (path, _) in project_modules(root, package).items():
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                module = (
                    node.module
                    if isinstance(node, ast.ImportFrom)
                    else next((a.name for a in node.names), None)
                    if isinstance(node, ast.Import)
                    else None
                )
                if module and (module == package or module.startswith(package + ".")):
                    found.append(f"{name}:{node.lineno}")
    return sorted(set(found))


def test_project_modules_are_imported_at_the_top_of_a_module() -> None:
    """Layers read from the imports: no project import hides inside a function (heavy
    libraries such as torch are imported lazily, project modules are not), except the
    command line's per-command imports."""
    inside = [
        where
        for where in function_level_project_imports()
        if where.split(":")[0] not in LAZY_COMMAND_IMPORTS
    ]
    assert inside == []


def test_the_function_level_import_finder_sees_one(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n    return b\n")
    (package / "b.py").write_text("import os\n\n\ndef g():\n    import json\n")
    assert function_level_project_imports(tmp_path, "pkg") == ["pkg.a:2"]
