"""Shared by the benchmark scripts: machine description, leak detection, BENCHMARKS.md sections."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
YOGA = ROOT.parent / "shared" / "datasets" / "yoga-poses"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (
        f"{cpu}, {cores} cores, {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, "
        f"torch {torch.__version__}, no GPU"
        if not torch.cuda.is_available()
        else f"{cpu}, {cores} cores, GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leaked_test_files(root: Path = YOGA) -> set[str]:
    """TEST images with a byte-identical copy in TRAIN (they inflate test accuracy)."""

    def files(split):
        return [p for p in (root / split).rglob("*") if p.is_file()]

    train_hashes = {sha256(p) for p in files("TRAIN")}
    return {str(p) for p in files("TEST") if sha256(p) in train_hashes}


def write_section(name: str, body: str, *, command: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- {name}:start -->\n{body.rstrip()}\n\n"
        f"Command: `{command}` — machine: {machine()} — date: {stamp}, commit "
        f"{_commit()}.\n<!-- {name}:end -->"
    )
    text = (
        BENCHMARKS_MD.read_text()
        if BENCHMARKS_MD.exists()
        else (
            "# Benchmarks\n\nMeasured numbers only, each with the command that produced it. Ratios "
            "compare against a baseline measured in the same run.\n"
        )
    )
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.DOTALL)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    BENCHMARKS_MD.write_text(text)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class ResultLog:
    """A benchmark's results as JSON lines in ``path``, one row per finished run, so an
    interrupted benchmark continues where it stopped."""

    def __init__(self, path: Path):
        self.path = path
        text = path.read_text() if path.exists() else ""
        self.rows: list[dict] = [json.loads(line) for line in text.splitlines()]

    def has(self, **key) -> bool:
        """Whether a row with these values is logged already."""
        return any(all(row.get(k) == v for k, v in key.items()) for row in self.rows)

    def add(self, row: dict) -> None:
        """``row`` kept, printed and appended to the file."""
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def timed_train(data: Path, out: Path, cache: Path, *options: str):
    """``python -m visiontune train DATA OPTIONS --out OUT --cache-dir CACHE --no-progress`` as
    its own process, so Python's start and the imports are inside the wall time: ``(wall
    seconds from launch to exit, the 1-minute load average before it, the finished process)``."""
    load = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "visiontune", "train", str(data), *options]
        + ["--out", str(out), "--cache-dir", str(cache), "--no-progress"],
        capture_output=True,
        text=True,
    )
    return time.monotonic() - started, load, proc
