"""The package's shape: imports between its modules flow one way (no cycle, counting imports made
inside functions too), the README's layout lists every module in an order the imports follow, and
no module grows past what a reader takes in at once."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sebre_ij"
MAX_LINES = 450


def imported_modules(path: Path) -> set[str]:
    """The package modules a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sebre_ij."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sebre_ij."))
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {p.stem: p for p in package.glob("*.py") if p.stem != "__init__"}
    return {name: imported_modules(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_imports_between_modules_form_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_made_by_an_import_inside_a_function(tmp_path):
    (tmp_path / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (tmp_path / "high.py").write_text("from .low import f\n\ndef g():\n    return f\n")
    (tmp_path / "leaf.py").write_text("import sebre_ij.low\n")
    assert find_cycle(import_graph(tmp_path)) == ["high", "low", "high"]
    (tmp_path / "low.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def layout_order(readme: Path = PACKAGE.parent / "README.md") -> list[str]:
    """The modules as the README's Layout section lists them."""
    return re.findall(r"^ {6}(\w+)\.py ", readme.read_text(encoding="utf-8").split("\n## Layout\n")[1], re.M)


def test_the_readme_layout_lists_every_module_after_those_it_imports():
    order = layout_order()
    graph = import_graph()
    assert sorted(order) == sorted(graph), "README Layout and sebre_ij/ differ: " + str(set(order) ^ set(graph))
    upward = [f"{m} -> {n}" for m in order for n in graph[m] if order.index(n) > order.index(m)]
    assert not upward, "modules listed before modules they import: " + ", ".join(upward)


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {
        p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
