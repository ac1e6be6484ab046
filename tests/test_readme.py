"""The README's Python example runs as written, and its two set-up commands are the CI's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(tmp_path):
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    env = {**os.environ, "VISIONTUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "face" in proc.stdout and (tmp_path / "runs").is_dir()


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    setup = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in setup.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[1] == ci
    assert commands[0].endswith("visiontune demo")
