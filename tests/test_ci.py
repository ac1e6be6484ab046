"""CI's guarantees: missing resources fail under ``$CI``; ``.ci/run`` installs Chromium when it is
missing, before the tests, and exits with pytest's exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import in_ci, require_or_skip

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "value, set_",
    [(None, False), ("", False), ("0", False), ("false", False), ("true", True), ("1", True)],
)
def test_in_ci(monkeypatch, value, set_):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is set_


def test_a_missing_resource_skips_but_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no browser"):
        require_or_skip("no browser")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no browser .*CI is set"):
        require_or_skip("no browser")


def _fake_tools(folder: Path, log: Path, *, python_exit: int, chromium: bool) -> dict:
    """A PATH of stand-ins that log their arguments: pip, python, apt-get (and chromium)."""
    folder.mkdir(parents=True)
    for tool in ("bash", "dirname", "id"):
        (folder / tool).symlink_to(shutil.which(tool))
    bash = shutil.which("bash")
    scripts = {
        tool: f'echo "{tool} $*" >> {log}\nexit {code}'
        for tool, code in {"pip": 0, "python": python_exit, "apt-get": 0, "chromium": 0}.items()
        if chromium or tool != "chromium"
    }
    scripts["sudo"] = 'exec "$@"'  # when the tests do not run as root
    for tool, script in scripts.items():
        (folder / tool).write_text(f"#!{bash}\n{script}\n")
        (folder / tool).chmod(0o755)
    return {"PATH": str(folder), "HOME": os.environ.get("HOME", "/tmp"), "CI": ""}


def _ci_run(tmp_path: Path, *, python_exit: int = 0, chromium: bool) -> tuple[int, list[str]]:
    log = tmp_path / "log"
    env = _fake_tools(tmp_path / "bin", log, python_exit=python_exit, chromium=chromium)
    done = subprocess.run(
        [shutil.which("bash"), str(ROOT / ".ci" / "run")], env=env, capture_output=True, timeout=60
    )
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_ci_run_installs_chromium_first_only_when_missing(tmp_path):
    code, calls = _ci_run(tmp_path / "missing", chromium=False)
    assert code == 0
    assert [c.split()[0] for c in calls] == ["apt-get", "apt-get", "pip", "python"]
    assert calls[0].startswith("apt-get update") and calls[1].endswith("install -y -qq chromium")
    assert calls[3] == "python -m pytest --durations=15"
    code, calls = _ci_run(tmp_path / "present", chromium=True)
    assert code == 0 and [c.split()[0] for c in calls] == ["pip", "python"]


@pytest.mark.parametrize("python_exit", [1, 2, 5])
def test_ci_run_exits_with_pytests_exit_code(tmp_path, python_exit):
    assert _ci_run(tmp_path, python_exit=python_exit, chromium=True)[0] == python_exit


def test_ci_run_sets_ci_and_strict_mode():
    text = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in text and 'export CI="${CI:-true}"' in text
