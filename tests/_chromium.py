"""Headless Chromium for tests: open a page and report what a person would see go wrong.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, NUL-terminated JSON), so no websocket library, port or driver is needed.
Debian's ``chromium`` package is installed with apt-get when missing (CI runs as root on a
clean machine); ``find_chromium`` says why not when that cannot be done.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Every <img> on the page: whether it loaded and decoded (naturalWidth > 0), by its src attribute.
_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(img => ({
    src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
    width: img.naturalWidth})))"""


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def find_chromium() -> tuple[str | None, str]:
    """``(path, "")`` to a chromium binary, installing Debian's package if needed, or
    ``(None, reason)`` when it is missing and cannot be installed here."""
    path = shutil.which("chromium")
    if path:
        return path, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed (apt-get install chromium needs root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]  # another install may hold the lock for a while
    for command in (
        ["apt-get", "update", "-qq", *lock],
        ["apt-get", "install", "-y", "-qq", *lock, "chromium"],
    ):
        try:
            proc = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return None, f"{' '.join(command)} took over 30 minutes"
        if proc.returncode:
            return None, f"{' '.join(command)} failed: {_tail(proc.stderr or proc.stdout)}"
    path = shutil.which("chromium")
    return (path, "") if path else (None, "apt-get installed chromium but it is not on PATH")


@dataclass
class PageCheck:
    """What loading a page showed: console errors and uncaught exceptions, and its images."""

    errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)

    @property
    def broken_images(self) -> list[str]:
        return [img["src"] for img in self.images if not img["loaded"]]


def _above_ten(fd: int) -> int:
    """``fd`` moved to a descriptor number of at least 10."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class _DevToolsPipe:
    """One headless Chromium and its DevTools protocol on fds 3 (commands) and 4 (replies)."""

    def __init__(self, chromium: str, *, timeout: float):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        self._stderr = tempfile.TemporaryFile()
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. bash puts the pipe ends
        # there (no preexec_fn: unsafe with torch's threads); moved to fds >= 10 first so that
        # neither end already sits on 3 or 4.
        child_r, child_w = (_above_ten(fd) for fd in (to_child_r, from_child_w))
        wire = 'exec 3<&"$1" 4>&"$2"; eval "exec $1<&- $2>&-"; shift 2; exec "$@"'
        # --no-sandbox: Chromium's sandbox refuses to run as root, which CI is
        args = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["bash", "-c", wire, "chromium", str(child_r), str(child_w), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            pass_fds=(child_r, child_w),
        )
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(
                    f"chromium did not answer within {self.timeout:.0f} s; "
                    f"stderr: {self.stderr_tail()}"
                )
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError(
                    f"chromium closed the DevTools pipe; stderr: {self.stderr_tail()}"
                )
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def wait_for(self, method: str) -> dict:
        """The first event named ``method`` (already received, or the next to come)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return _tail(self._stderr.read().decode(errors="replace"))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
                self.proc.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_child)
            os.close(self._from_child)
            self._stderr.close()
            self._profile.cleanup()


def _error_text(event: dict) -> str | None:
    """A console error, failed load or uncaught exception as one line; None for anything else."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "exception: " + details.get("exception", {}).get(
            "description", details.get("text", "")
        )
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console.error: " + " ".join(
            str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
        )
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def check_page(chromium: str, page: Path, *, timeout: float = 60.0) -> PageCheck:
    """Open ``page`` (a local HTML file) in headless Chromium; wait for its load event (all its
    images fetched), then collect console errors, exceptions and each image's state."""
    browser = _DevToolsPipe(chromium, timeout=timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        navigation = browser.send(
            "Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session
        )
        if navigation.get("errorText"):
            raise RuntimeError(f"chromium could not open {page}: {navigation['errorText']}")
        browser.wait_for("Page.loadEventFired")
        result = browser.send(
            "Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True}, session=session
        )["result"]
        check = PageCheck(images=json.loads(result["value"]))
        check.errors = [text for text in map(_error_text, browser.events) if text]
        return check
    finally:
        browser.close()


class LivePage:
    """A page open in headless Chromium, driven as a person would: choose files in an
    ``<input type=file>``, read what the page shows, collect its console errors."""

    def __init__(self, browser: _DevToolsPipe, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str):
        reply = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_until(self, expression: str, *, timeout: float = 60.0):
        """The first truthy value of ``expression``, evaluated until ``timeout`` (the page's
        own state is polled, as Playwright's waits do; nothing depends on how long it takes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"the page never made {expression!r} true within {timeout:.0f} s")

    def choose_files(self, selector: str, paths: list[Path]) -> None:
        """Set the files of the page's file input, as the file picker would (fires change)."""
        root = self.browser.send("DOM.getDocument", session=self.session)["root"]["nodeId"]
        node = self.browser.send(
            "DOM.querySelector", {"nodeId": root, "selector": selector}, session=self.session
        )["nodeId"]
        files = [str(Path(p).resolve()) for p in paths]
        self.browser.send(
            "DOM.setFileInputFiles", {"files": files, "nodeId": node}, session=self.session
        )

    def errors(self) -> list[str]:
        self.evaluate("1")  # reads every event Chromium sent before it
        return [text for text in map(_error_text, self.browser.events) if text]


@contextmanager
def open_page(chromium: str, url: str, *, timeout: float = 60.0) -> Iterator[LivePage]:
    """``url`` loaded in a fresh headless Chromium (its load event fired), as a ``LivePage``."""
    browser = _DevToolsPipe(chromium, timeout=timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "DOM"):
            browser.send(f"{domain}.enable", session=session)
        navigation = browser.send("Page.navigate", {"url": url}, session=session)
        if navigation.get("errorText"):
            raise RuntimeError(f"chromium could not open {url}: {navigation['errorText']}")
        browser.wait_for("Page.loadEventFired")
        yield LivePage(browser, session)
    finally:
        browser.close()
