"""Every ``>>>`` example in visiontune's docstrings runs and prints what it shows.

The globals every example may use, besides its own module's:

- ``photos``: ``pathlib.Path`` of a generated split folder, ``photos/{train,val,test}/{cat,dog}/``
  of small solid-colour PNGs (6 + 2 + 3 per class), inside the current directory, so the
  string ``"photos/"`` names it too;
- ``TINY``: ``{"backbone": "test_efficientnet", "weights": "none"}``, a tiny random timm model
  for examples that build or train one (``visiontune.fit(photos, **TINY, strategy="head",
  epochs=1, progress=False)``);
- ``visiontune``: the package.

Each module's examples run in a fresh temporary current directory, with ``$VISIONTUNE_CACHE``
pointed at a temporary folder, so whatever they write is thrown away.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
from conftest import TINY, make_split_folder

PACKAGE = Path(__file__).resolve().parents[1] / "visiontune"
PHOTOS = {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
NOT_IMPORTABLE = {"visiontune.__main__"}  # runs the CLI when imported


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# A module whose source has no ">>>" has no examples: skip importing it (and torch with it).
MODULES = sorted(
    name
    for name, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
    if name not in NOT_IMPORTABLE and ">>>" in path.read_text(encoding="utf-8")
)


@pytest.fixture
def doctest_globals(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    photos = make_split_folder(work / "photos", PHOTOS)
    import visiontune

    return {"photos": photos, "TINY": dict(TINY), "visiontune": visiontune}


def test_every_module_with_examples_is_collected():
    assert "visiontune.data.augment" in MODULES and "visiontune.__main__" not in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, doctest_globals):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    tests = finder.find(module, name, extraglobs=doctest_globals)
    assert tests, f"{name} has '>>>' but no docstring example was found"
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.lineno or 0):
        runner.run(test, out=report.append)
    assert not runner.failures, "".join(report)
