"""The code is formatted and linted as pyproject.toml's [tool.ruff] says (line length, rules,
complexity): the same commands a contributor runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["visiontune", "tests", "benchmarks"]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed (the test extra has it)"
)


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_format_check():
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check():
    proc = _ruff("check", "--output-format", "concise")
    assert proc.returncode == 0, proc.stdout + proc.stderr
