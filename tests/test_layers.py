"""Lower layers never import higher ones: cli -> api -> exporting -> prediction ->
features/engine -> strategies -> data/backbones/formats -> specs (DESIGN.md). Parsed with ast,
so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "visiontune"

LAYER = {
    "specs": 0,
    "errors": 0,
    "_io": 0,
    "_paths": 0,
    "_runtime": 0,
    "_console": 0,
    "_seeding": 0,
    "data": 1,
    "backbones": 1,
    "formats": 1,  # bytes on disk; bundle.py builds a Classifier, so beside backbones
    "strategies": 2,
    "engine": 3,
    "evaluation": 3,
    "features": 4,
    "prediction": 5,
    "exporting": 6,  # above prediction: the parity check uses TrainedModel
    "config": 6,
    "demo": 6,
    "api": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 9,
}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imported_tops(module_path: Path) -> set[str]:
    tree = ast.parse(module_path.read_text())
    depth_of_package = len(module_path.relative_to(PACKAGE).parts) - 1
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then read the first part
                climbs = node.level - 1
                parts = list(module_path.relative_to(PACKAGE).parts[:depth_of_package])
                base = parts[: len(parts) - climbs] if climbs <= len(parts) else []
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    tops.add(target[0])
                else:
                    tops.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("visiontune."):
                tops.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            tops.update(
                a.name.split(".")[1] for a in node.names if a.name.startswith("visiontune.")
            )
    return tops


def test_every_module_has_a_layer():
    tops = {_top(p) for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYER), f"add to LAYER: {sorted(tops - set(LAYER))}"


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = LAYER[_top(path)]
        for imported in _imported_tops(path):
            if imported in LAYER and LAYER[imported] > own:
                violations.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not violations, violations
