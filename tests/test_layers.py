"""The package's shape, read with ast (nothing from visiontune is imported, except by the README
test at the end): lower layers never import higher ones (``LAYER``: cli -> api -> training ->
config -> prediction -> features / exporting -> engine / evaluation -> strategies -> data /
backbones / formats -> specs / choices; DESIGN.md), no import cycles, no ``_private`` name
imported from another module, and functions of at most ``MAX_FUNCTION_LINES`` lines."""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "visiontune"

LAYER = {
    "specs": 0,
    "errors": 0,
    "choices": 0,
    "_io": 0,
    "_paths": 0,
    "_runtime": 0,
    "_console": 0,
    "_seeding": 0,
    "_faults": 0,
    "_version": 0,
    "data": 1,
    "backbones": 1,
    "formats": 1,
    "strategies": 2,
    "config": 2,  # TrainConfig: options and their validation (data.augment parses --augment)
    "engine": 3,
    "evaluation": 3,
    "features": 4,
    "prediction": 5,
    "trust": 5,  # audit: probes on features, the evaluation report's page helpers
    "exporting": 6,  # above prediction: the parity check uses TrainedModel
    "demo": 6,
    "training": 7,
    "api": 8,
    "serve": 8,  # the web app: prediction below it; the CLI loads the model through api
    "cli": 9,
    "__main__": 10,
    "__init__": 10,
}

MAX_FUNCTION_LINES = 80


# --- the module graph ------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    """``visiontune/cli/__init__.py`` -> ``visiontune.cli``; ``visiontune/api.py`` ->
    ``visiontune.api``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every import statement, at module level or inside functions, except under
    ``if TYPE_CHECKING:`` (those never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base_of(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports(module: str):
    """``(target module, imported name or None, line)`` for every import in ``module`` of a
    visiontune module; ``name`` is None when the module itself is what is imported."""
    tree = ast.parse(MODULES[module].read_text())
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in MODULES:  # `import a.b.c` of a non-module
                    target = target.rpartition(".")[0]
                if target:
                    yield target, None, node.lineno
            continue
        base = _base_of(module, node)
        if base not in MODULES:
            continue
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in MODULES:
                yield submodule, None, node.lineno
            else:
                yield base, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    return {m: {target for target, _, _ in _imports(m) if target != m} for m in sorted(MODULES)}


def _shortest_path(graph, start: str, goal: str) -> list[str] | None:
    previous = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = previous[node]
            return path[::-1]
        for nxt in sorted(graph[node]):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each import edge that lies on a cycle, without repeats (each
    written from its alphabetically first module, the first module repeated at the end)."""
    cycles = set()
    for source in graph:
        for target in graph[source]:
            back = _shortest_path(graph, target, source)
            if back is None:
                continue
            cycle = [source, *back[:-1]]
            first = cycle.index(min(cycle))
            cycles.add(tuple(cycle[first:] + cycle[:first]))
    return [[*c, c[0]] for c in sorted(cycles)]


def test_module_graph_reads_relative_imports():
    graph = _graph()
    assert "visiontune.specs" in graph["visiontune.data.transforms"]
    assert "visiontune.errors" in graph["visiontune.cli"]
    assert "visiontune.data.augment_ops" in graph["visiontune.data.augment"]  # in a function
    # the ops import augment's names under `if TYPE_CHECKING:` only: one way, no cycle
    assert "visiontune.data.augment" not in graph["visiontune.data.augment_ops"]


def test_import_cycles_lists_each_cycle_once():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]


def test_no_import_cycles():
    cycles = import_cycles(_graph())
    shown = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s):\n{shown}"


# --- private names -----------------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_imported_from_another_module():
    """Importing a private *module* (``from .. import _runtime``, ``from .._io import x``) is
    fine; importing a ``_name`` defined in another module is not."""
    offenders = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {name} from {target}"
        for module in sorted(MODULES)
        for target, name, line in _imports(module)
        if name is not None and _is_private(name) and target != module
    ]
    assert not offenders, "\n".join(offenders)


# --- function length ---------------------------------------------------------------------------


def test_functions_are_short():
    lengths = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    lengths.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    offenders = [f"{where}: {lines} lines" for lines, where in sorted(lengths, reverse=True)]
    assert not offenders, f"over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


# --- layers ------------------------------------------------------------------------------------


def _top(module: str) -> str:
    """The layer a module belongs to: ``visiontune.cli.train`` -> ``cli``; the package's own
    ``__init__`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    tops = {_top(m) for m in MODULES}
    assert tops <= set(LAYER), f"add to LAYER: {sorted(tops - set(LAYER))}"


def test_lower_layers_never_import_higher_ones():
    violations = []
    for module in sorted(MODULES):
        own = LAYER.get(_top(module))
        for target, name, _ in _imports(module):
            if target == "visiontune" and name is not None:
                continue  # `from .. import __version__`: a constant, not the public surface
            imported = LAYER.get(_top(target))
            if own is not None and imported is not None and imported > own:
                violations.append(f"{MODULES[module].relative_to(ROOT)} imports {target}")
    assert not violations, sorted(set(violations))


# --- the README's Python names ----------------------------------------------------------------

_CALL = re.compile(r"(?<![\w.])visiontune\.([A-Za-z_]\w*)\(")


def readme_calls(text: str) -> set[str]:
    """Names ``N`` of every ``visiontune.N(`` in the README's fenced code blocks and inline code."""
    names = set()
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        names.update(_CALL.findall(block))
    for span in re.findall(r"`([^`\n]+)`", fenced.sub("", text)):
        names.update(_CALL.findall(span))
    return names


def test_readme_calls_finds_both_kinds():
    text = "`visiontune.fit(data)` and x.visiontune.no(\n```python\nvisiontune.load(r)\n```\n"
    assert readme_calls(text) == {"fit", "load"}


def test_readme_python_names_exist():
    import visiontune

    names = readme_calls((ROOT / "README.md").read_text())
    assert names, "the README shows no visiontune.NAME( call"
    missing = sorted(n for n in names if not hasattr(visiontune, n))
    assert not missing, f"the README calls visiontune.{missing} but the package has no such name"
