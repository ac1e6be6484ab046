"""`visiontune serve`: the real server on a free loopback port, driven by HTTP clients and by
headless Chromium through the page's own file input; its batcher, limits and shutdown.

The model is a real one: the embedded EfficientNet-Lite0 with a head trained on scikit-image's
lfw_subset photos (faces vs. not faces), so "the right top class for a real image" means what
it says. Shutdown tests hold the model's forward pass at a known point (``VISIONTUNE_FAULT=
hold-batch:FILE``) so that requests are in flight for certain when the signal is sent.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from _chromium import find_chromium, open_page
from conftest import TINY, make_split_folder
from PIL import Image

import visiontune
from visiontune.demo import build_demo_dataset
from visiontune.errors import VisiontuneError
from visiontune.serve import ServeConfig, create_app
from visiontune.serve.batcher import MicroBatcher, ModelThread, QueueFull

STARTUP_S = 120  # a cold process imports torch and loads the model


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("lfw") / "lfw_subset")


@pytest.fixture(scope="module")
def face_run(faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-runs") / "faces"
    return visiontune.fit(
        faces, strategy="head", out=str(out), progress=False, workers=0, seed=0
    ).run_dir


def _test_images(faces: Path, per_class: int = 4) -> list[tuple[Path, str]]:
    return [
        (path, label)
        for label in ("face", "not_face")
        for path in sorted((faces / "test" / label).glob("*.png"))[:per_class]
    ]


class Server:
    """``visiontune serve`` in a subprocess, on the port it chose (``--port 0``)."""

    def __init__(self, run: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "visiontune", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self._first_line()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no address in {line!r}; stderr: {self.proc.stderr.read()}"
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _first_line(self) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(STARTUP_S)
        if not result:
            self.proc.kill()
            raise TimeoutError(f"serve did not start within {STARTUP_S} s")
        return result[0]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def listening(self) -> bool:
        try:
            httpx.get(f"{self.url}/health", timeout=2)
            return True
        except httpx.TransportError:
            return False


@pytest.fixture(scope="module")
def server(face_run):
    server = Server(face_run, "--max-batch", "16", "--max-files", "8")
    yield server
    assert server.stop() == 0, server.proc.stderr.read()


def _post(url: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return httpx.post(
        f"{url}/predict",
        params=params,
        files=[("files", (name, data)) for name, data in files],
        timeout=60,
    )


# --- the JSON API -------------------------------------------------------------------------------


def test_predict_health_and_model_answer(server, faces, face_run):
    images = _test_images(faces)
    files = [(p.name, p.read_bytes()) for p, _ in images]
    reply = _post(server.url, files, top_k=2)
    assert reply.status_code == 200, reply.text
    rows = reply.json()["predictions"]
    assert [r["file"] for r in rows] == [p.name for p, _ in images]
    right = sum(r["top"][0]["class"] == label for r, (_, label) in zip(rows, images, strict=True))
    assert right >= len(images) - 1, rows  # lfw head: ~95 % on test
    assert all(len(r["top"]) == 2 and r["unknown"] in (True, False) for r in rows)
    assert abs(sum(t["probability"] for t in rows[0]["top"]) - 1) < 1e-4

    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["images"] >= len(images)
    card = httpx.get(f"{server.url}/model").json()
    assert card["kind"] == "run" and card["classes"] == ["face", "not_face"]
    member = card["members"][0]
    assert member["backbone"] == "efficientnet_lite0" and member["preprocess"]["size"] == 224
    assert member["metrics"]["test"]["accuracy"] > 0.8
    saved = json.loads((face_run / "config.json").read_text())["precision"]
    assert member["precision"] == saved  # served in the precision it was calibrated in
    assert {"visiontune", "torch", "fastapi"} <= set(card["versions"])


def test_predict_matches_visiontune_predict(server, faces, face_run):
    """The server's probabilities are the CLI's: same decoding, crop, temperature."""
    path = _test_images(faces, 1)[0][0]
    served = _post(server.url, [(path.name, path.read_bytes())], tta="flip").json()
    local = visiontune.load(face_run).predict([path], tta="flip")[0]
    a, b = served["predictions"][0], local
    assert a["top"][0]["class"] == b["top"][0]["class"]
    assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-4
    assert abs(a["unknown_score"] - b["unknown_score"]) < 1e-3


def test_explain_returns_an_overlay_png(server, faces):
    path = _test_images(faces, 1)[0][0]
    row = _post(server.url, [(path.name, path.read_bytes())], explain="true").json()
    url = row["predictions"][0]["explanation"]
    assert url.startswith("data:image/png;base64,")
    import base64

    overlay = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert overlay.size == (224, 224)


def test_openapi_and_offline_docs(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/predict", "/model", "/health"} <= set(spec["paths"])
    parameters = {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert {"top_k", "tta", "reject", "explain"} <= parameters
    docs = httpx.get(f"{server.url}/docs").text
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs)
    assert assets and not re.search(r'(?:src|href)="https?://', docs)  # nothing from a CDN
    for asset in assets:
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset


# --- bad requests: each its status and message, none affecting the next -------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height``: Pillow's pixel limit sees the
    header, so the bomb is refused without gigabytes ever being allocated."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = body
    data[29:33] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


def _bad_requests(url: str, image: bytes) -> list[tuple[str, callable, int, str]]:
    one = [("x.png", image)]
    return [
        ("not an image", lambda: _post(url, [("notes.txt", b"hello")]), 415, "notes.txt"),
        ("empty file", lambda: _post(url, [("x.png", b"")]), 400, "empty"),
        ("empty body", lambda: httpx.post(f"{url}/predict"), 400, "no body"),
        (
            "no file field",
            lambda: httpx.post(f"{url}/predict", files=[("note", (None, "text"))]),
            400,
            "no image",
        ),
        (
            "raw bytes",
            lambda: httpx.post(
                f"{url}/predict", content=image, headers={"content-type": "image/png"}
            ),
            415,
            "multipart",
        ),
        (
            "pixel bomb",
            lambda: _post(url, [("bomb.png", _png_claiming(30000, 30000))]),
            413,
            "pixels",
        ),
        ("too large", lambda: _post(url, [("big.png", b"\0" * (21 << 20))]), 413, "20 MB"),
        ("too many files", lambda: _post(url, one * 9), 400, "files"),
        ("unknown tta", lambda: _post(url, one, tta="20crop"), 422, "tta"),
        ("top_k 0", lambda: _post(url, one, top_k=0), 422, "top_k"),
        ("top_k text", lambda: _post(url, one, top_k="many"), 422, "top_k"),
        ("reject", lambda: _post(url, one, reject="maybe"), 422, "reject"),
        ("reject_rate", lambda: _post(url, one, reject_rate=2), 422, "reject_rate"),
        ("no such page", lambda: httpx.get(f"{url}/nope"), 404, "Not Found"),
    ]


def test_every_bad_request_gets_its_status_and_message(server, faces):
    path = _test_images(faces, 1)[0][0]
    image = path.read_bytes()
    for what, send, status, words in _bad_requests(server.url, image):
        reply = send()
        assert reply.status_code == status, (what, reply.status_code, reply.text)
        body = reply.json()
        assert body["status"] == status and words in body["error"], (what, body)
        good = _post(server.url, [(path.name, image)])  # the next request is unaffected
        assert good.status_code == 200, (what, good.text)
    assert server.proc.poll() is None


# --- under load ---------------------------------------------------------------------------------


async def _client(url: str, images: list[tuple[bytes, str]], requests: int, offset: int):
    errors, wrong = [], 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i in range(requests):
            data, label = images[(offset + i) % len(images)]
            try:
                reply = await client.post("/predict", files=[("files", ("i.png", data))])
                reply.raise_for_status()
                wrong += reply.json()["predictions"][0]["top"][0]["class"] != label
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
    return errors, wrong


async def _load(url: str, images, clients: int, requests: int):
    return await asyncio.gather(*(_client(url, images, requests, c) for c in range(clients)))


def _rss_once_idle(server: Server) -> float:
    """The server's memory once its batcher has been idle after the last pass (and has handed
    freed memory back: ``idle`` in /health)."""
    _wait_for(lambda: httpx.get(f"{server.url}/health").json()["idle"], "the server idle")
    return server.rss_mb()


def test_load_32_clients_20_requests_no_errors_memory_back(server, faces):
    images = [(p.read_bytes(), label) for p, label in _test_images(faces, 8)]
    asyncio.run(_load(server.url, images, 32, 2))  # warm: allocator pools, thread pools
    before = _rss_once_idle(server)
    results = asyncio.run(_load(server.url, images, 32, 20))
    after = _rss_once_idle(server)  # the idle server hands freed memory back to the OS
    errors = [e for errs, _ in results for e in errs]
    wrong = sum(w for _, w in results)
    assert errors == [], errors[:3]
    assert wrong <= 32 * 20 * 0.1  # the same images as above: right ~95 % of the time
    health = httpx.get(f"{server.url}/health").json()
    assert health["largest_batch"] > 1 and health["in_flight"] == 0
    assert after < before * 1.15 + 64, (before, after)  # back near where it started


# --- shutdown -----------------------------------------------------------------------------------


def _send_in_threads(url: str, image: bytes, count: int) -> tuple[list, list[threading.Thread]]:
    outcomes: list = []

    def send():
        try:
            outcomes.append(_post(url, [("x.png", image)]).status_code)
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=send) for _ in range(count)]
    for t in threads:
        t.start()
    return outcomes, threads


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def test_sigterm_lets_requests_in_flight_finish(face_run, faces, tmp_path):
    gate = tmp_path / "release"
    server = Server(face_run, env={"VISIONTUNE_FAULT": f"hold-batch:{gate}"})
    image = _test_images(faces, 1)[0][0].read_bytes()
    try:
        outcomes, threads = _send_in_threads(server.url, image, 4)
        _wait_for(lambda: httpx.get(f"{server.url}/health").json()["in_flight"] == 4, "4 in flight")
        server.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: not server.listening(), "the listening socket closed")
        gate.touch()  # the held forward pass goes on during the shutdown
        for t in threads:
            t.join(60)
        assert outcomes == [200] * 4
        assert server.proc.wait(60) == 0
        assert "stopped" in server.proc.stdout.read()
    finally:
        server.stop()


def test_sigterm_past_the_grace_period_errors_instead_of_hanging(face_run, faces, tmp_path):
    never = tmp_path / "never-created"
    server = Server(
        face_run, "--graceful-timeout", "1", env={"VISIONTUNE_FAULT": f"hold-batch:{never}"}
    )
    image = _test_images(faces, 1)[0][0].read_bytes()
    try:
        outcomes, threads = _send_in_threads(server.url, image, 2)
        _wait_for(lambda: httpx.get(f"{server.url}/health").json()["in_flight"] == 2, "2 in flight")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        assert len(outcomes) == 2 and 200 not in outcomes, outcomes
    finally:
        server.stop()


def test_a_port_in_use_is_a_one_line_error(server, face_run):
    proc = subprocess.run(
        [sys.executable, "-m", "visiontune", "serve", str(face_run), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("visiontune: error:") and "Traceback" not in proc.stderr


# --- the page, in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    path, reason = find_chromium()
    if not path:
        pytest.skip(reason)
    return path


def test_the_page_classifies_a_file_chosen_in_its_own_input(server, faces, chromium):
    face, label = _test_images(faces, 1)[0]
    with open_page(chromium, server.url + "/") as page:
        page.wait_until("document.body.dataset.ready === 'true'")
        assert "face" in page.evaluate("document.getElementById('summary').textContent")
        page.choose_files("#files", [face])
        done = page.wait_until(
            "(() => { const r = document.querySelector('.result[data-done]');"
            " return r && {top: r.dataset.topClass || null, error: r.dataset.error || null,"
            " bars: r.querySelectorAll('.bar').length}; })()"
        )
        assert done == {"top": label, "error": None, "bars": 2}, done
        page.choose_files("#files", [Path(__file__)])  # not an image: its own error, shown
        error = page.wait_until(
            "(() => { const r = document.querySelectorAll('.result[data-done]');"
            " return r.length === 2 && r[0].dataset.error; })()"
        )
        assert "not an image" in error
        # the browser logs a failed fetch (the 415) as a console error; nothing else may fail
        assert [e for e in page.errors() if "415" not in e] == []


def test_the_model_card_page_loads_cleanly(server, chromium):
    with open_page(chromium, server.url + "/card") as page:
        page.wait_until("document.body.dataset.ready === 'true'")
        text = page.evaluate("document.body.innerText")
        assert "face, not_face" in text and "efficientnet_lite0" in text
        assert "accuracy" in text
        assert page.errors() == []


# --- in-process: create_app mounted in another app, an ONNX file, an ensemble ------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    data = make_split_folder(
        tmp_path_factory.mktemp("tiny-serve") / "data",
        {
            "train": {"cat": 6, "dog": 6},
            "val": {"cat": 10, "dog": 10},
            "test": {"cat": 2, "dog": 2},
        },
    )
    runs = [
        visiontune.fit(
            data, strategy="head", seed=s, out=str(data.parent / f"run{s}"), progress=False, **TINY
        ).run_dir
        for s in (0, 1)
    ]
    return data, runs


def test_create_app_mounted_inside_another_app(tiny_runs):
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.routing import Mount

    data, runs = tiny_runs
    outer = Starlette(routes=[Mount("/vision", app=create_app(visiontune.load(runs[0])))])
    image = next((data / "test" / "dog").iterdir()).read_bytes()
    with TestClient(outer) as client:  # a mounted app gets no lifespan: the batcher starts lazily
        reply = client.post("/vision/predict", files=[("files", ("d.png", image))])
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["top"][0]["class"] == "dog"


def test_an_onnx_export_is_served_without_tta_or_explanations(tiny_runs):
    from fastapi.testclient import TestClient

    data, runs = tiny_runs
    visiontune.export(runs[0], format="onnx")
    app = create_app(visiontune.load(runs[0] / "model.onnx"))
    image = next((data / "test" / "cat").iterdir()).read_bytes()
    with TestClient(app) as client:
        card = client.get("/model").json()
        assert card["kind"] == "onnx" and card["serving"]["tta"] == ["none"]
        assert not card["serving"]["explain"]
        ok = client.post("/predict", files=[("files", ("c.png", image))])
        assert ok.json()["predictions"][0]["top"][0]["class"] == "cat"
        for params, words in (({"tta": "flip"}, "ONNX"), ({"explain": "true"}, "gradients")):
            reply = client.post("/predict", params=params, files=[("files", ("c.png", image))])
            assert reply.status_code == 422 and words in reply.json()["error"], reply.text


def test_an_ensemble_card_lists_its_members(tiny_runs):
    from fastapi.testclient import TestClient

    _, runs = tiny_runs
    with TestClient(create_app(visiontune.load(runs))) as client:
        card = client.get("/model").json()
    assert card["kind"] == "ensemble" and [m["run"] for m in card["members"]] == list(
        map(str, runs)
    )


# --- the batcher, with a model that blocks where the test says ----------------------------------


class GatedModel:
    """``run(key, items)`` that records each batch and blocks the first one until released."""

    def __init__(self):
        self.batches: list[tuple[str, list]] = []
        self.release = threading.Event()

    def __call__(self, key, items):
        self.batches.append((key, list(items)))
        if len(self.batches) == 1:
            assert self.release.wait(30)
        if "boom" in items:
            raise ValueError("boom")
        return [f"{key}:{item}" for item in items]


async def _batched(max_batch: int, submissions: list[tuple[str, list]], max_queue: int = 100):
    model, worker = GatedModel(), ModelThread()
    batcher = MicroBatcher(model, worker, max_batch=max_batch, max_wait_s=0.0, max_queue=max_queue)
    first = asyncio.ensure_future(batcher.submit("a", ["first"]))
    while not model.batches:  # the first pass is running (and held): the rest queue up
        await asyncio.sleep(0.001)
    rest = [asyncio.ensure_future(batcher.submit(k, items)) for k, items in submissions]
    while batcher.waiting < sum(len(items) for _, items in submissions):
        await asyncio.sleep(0.001)
    model.release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    await batcher.close()
    worker.close()
    return model.batches, results


def test_images_waiting_together_share_passes_of_at_most_max_batch():
    submissions = [("a", [f"x{i}"]) for i in range(10)]
    batches, results = asyncio.run(_batched(4, submissions))
    assert [len(items) for _, items in batches] == [1, 4, 4, 2]
    assert results[1:] == [[f"a:x{i}"] for i in range(10)]  # each caller gets its own


def test_other_keys_never_share_a_pass_and_errors_reach_only_their_batch():
    submissions = [("a", ["1", "2"]), ("b", ["3"]), ("a", ["boom"]), ("b", ["4"])]
    batches, results = asyncio.run(_batched(8, submissions))
    assert batches[1:] == [("a", ["1", "2", "boom"]), ("b", ["3", "4"])]
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)  # a's pass
    assert results[2] == ["b:3"] and results[4] == ["b:4"]  # ...the other key's did not


def test_a_full_queue_refuses_at_once():
    async def scenario():
        model, worker = GatedModel(), ModelThread()
        batcher = MicroBatcher(model, worker, max_batch=2, max_wait_s=0.0, max_queue=3)
        first = asyncio.ensure_future(batcher.submit("a", ["first"]))
        while not model.batches:
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(batcher.submit("a", ["1", "2", "3"]))
        while batcher.waiting < 3:
            await asyncio.sleep(0.001)
        with pytest.raises(QueueFull):
            await batcher.submit("a", ["4"])
        model.release.set()
        assert await waiting == ["a:1", "a:2", "a:3"] and await first == ["a:first"]
        await batcher.close()
        worker.close()

    asyncio.run(scenario())


def test_serve_config_refuses_impossible_settings():
    with pytest.raises(VisiontuneError, match="max_queue"):
        ServeConfig(max_batch=64, max_queue=8)
    with pytest.raises(VisiontuneError, match="port"):
        ServeConfig(port=70000)


def test_accepted_connections_have_nagle_off():
    """``bind``'s socket says it is TCP, so asyncio sets TCP_NODELAY on each connection it
    accepts: without it every response on a kept-alive connection waited for the client's
    delayed ACK (~40 ms here), whatever the model's speed."""
    import socket

    from visiontune.serve.server import bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        sock = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(seen, 30)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) == 1


def test_the_card_links_an_evaluation_report_in_the_run_folder(tiny_runs):
    from fastapi.testclient import TestClient

    data, runs = tiny_runs
    visiontune.evaluate(runs[1], data / "test", report=runs[1] / "report")
    with TestClient(create_app(visiontune.load(runs[1]))) as client:
        card = client.get("/model").json()
        assert card["reports"] == ["/reports/0/"]
        page = client.get("/reports/0/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert client.get("/reports/0/metrics.json").json()["num_images"] == 4
