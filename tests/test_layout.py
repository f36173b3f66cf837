"""The layout of the library code (atjax/, data_pipeline/): imports go one way, files stay short.

Every import counts, at module level and inside functions (a function-level import is
still an edge that ties the two modules together), except those under `if TYPE_CHECKING:`.
A file over 600 lines says why in the first line of its docstring, with the words
"over 600 lines" and the reason.

`python tests/test_layout.py` prints the import cycles and long files it finds.
"""

from __future__ import annotations

import ast
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("atjax", "data_pipeline")
MAX_LINES = 600
LONG_REASON = re.compile(r"\bover 600 lines\b")


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_files(root: pathlib.Path = ROOT, packages=PACKAGES) -> dict[str, pathlib.Path]:
    """Module name -> file, for every .py file of `packages` under `root`."""
    return {_module_name(path, root): path
            for package in packages for path in sorted((root / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST):
    """Import and ImportFrom nodes in `node`, skipping `if TYPE_CHECKING:` bodies."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children = node.orelse
    else:
        children = ast.iter_child_nodes(node)
    for child in children:
        yield from _imports(child)


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the modules of `modules` it imports (names of packages and attributes
    resolved: `from atjax import export` is atjax.export, `from atjax.x import f` atjax.x)."""
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                candidates = [[base] for base in bases]
            else:
                if node.level:  # relative: from the module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module
                # `from P import x`: the submodule P.x where there is one, else P itself.
                candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
            for options in candidates:
                found = next((m for m in options if m in modules), None)
                if found is not None and found != name:
                    targets.add(found)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def long_files(modules: dict[str, pathlib.Path]) -> list[str]:
    """Files over MAX_LINES lines whose docstring's first line does not say why."""
    bad = []
    for path in modules.values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        first = docstring.strip().splitlines()[0] if docstring.strip() else ""
        if not LONG_REASON.search(first):
            bad.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                       f"{lines} lines")
    return bad


def test_no_two_library_modules_import_each_other():
    modules = library_files()
    assert "atjax.encoders.panns" in modules and "data_pipeline.pipeline" in modules
    graph = import_graph(modules)
    # The re-layout of the encoders: importers depend on the models, never the reverse.
    assert "atjax.encoders.resnet" in graph["atjax.encoders.panns"]
    assert "atjax.encoders.bert" in graph["atjax.encoders.text"]
    assert cycles(graph) == []


def test_no_library_file_is_long_without_saying_why():
    assert long_files(library_files()) == []


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_what_they_look_for(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        # A function-level import closes the loop; the TYPE_CHECKING one does not count.
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                    "def f():\n    from . import a\n    return a\n",
        "pkg/c.py": "import pkg.b\n",
        "pkg/d.py": "from pkg.c import x\n" + "x = 1\n" * MAX_LINES,
        "pkg/e.py": '"""E (over 600 lines: one generated table)."""\n' + "x = 1\n" * MAX_LINES,
    })
    modules = library_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.b"}
    assert graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert [line.split(":")[0].endswith("d.py") for line in long_files(modules)] == [True]


if __name__ == "__main__":
    found = library_files()
    for cycle in cycles(import_graph(found)):
        print("import cycle:", " <-> ".join(cycle))
    for line in long_files(found):
        print("long file without a reason:", line)
