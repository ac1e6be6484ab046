"""``visiontune serve`` under concurrent clients, batching on and off, beside ``predict``.

    python benchmarks/serve.py [--run RUN] [--images 192] [--rounds 2]

One model (a yoga ``head`` run, trained into ``--work`` when ``--run`` is not given) is served
by two ``visiontune serve`` processes at once: ``--max-batch 32`` (batching on, the default)
and ``--max-batch 1`` (off: one image per forward pass). Each sits idle while the other is
measured. For 1, 8 and 32 concurrent clients (asyncio + httpx in this process, each client
sending one image per request, one request after another), each configuration sends every one
of ``--images`` yoga TEST photos once; configurations alternate, round after round, with

* ``predict`` in this process - ``TrainedModel.predict`` on the same files (its loader's
  worker processes decode them), steady state: the throughput a script gets, and
* ``visiontune predict RUN FILES --format json`` as a process, start and imports included.

Reported per configuration: images per second (the median over rounds), and the latency of a
request, p50 and p99, over all rounds. The clients share the machine's two cores with the
server, as a local user's script would; their own cost is in every figure alike.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402

CLIENTS = (1, 8, 32)
MODES = {"batching on": ("--max-batch", "32"), "batching off": ("--max-batch", "1")}


def yoga_run(work: Path) -> Path:
    run = work / "yoga-head"
    if not (run / "model.safetensors").is_file():
        subprocess.run(
            [sys.executable, "-m", "visiontune", "train", str(YOGA), "--strategy", "head"]
            + ["--out", str(run), "--overwrite"],
            check=True,
        )
    return run


def decodable(paths: list[Path]) -> list[Path]:
    """Yoga's TEST holds files that are not images at all; the server answers 415 to them."""
    from visiontune.data.images import ImageDecodeError, decode_image

    kept = []
    for path in paths:
        try:
            decode_image(path)
            kept.append(path)
        except ImageDecodeError:
            continue
    return kept


class Served:
    def __init__(self, run: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "visiontune", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(180)
        self.url = "http://127.0.0.1:" + re.search(r":(\d+)/", line[0]).group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def _client(client, queue: asyncio.Queue, latencies: list[float]) -> int:
    errors = 0
    while not queue.empty():
        name, data = queue.get_nowait()
        start = time.perf_counter()
        reply = await client.post("/predict", files=[("files", (name, data))])
        latencies.append(time.perf_counter() - start)
        errors += reply.status_code != 200
    return errors


async def _load(url: str, images: list[tuple[str, bytes]], clients: int) -> tuple[float, list]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        errors = await asyncio.gather(*(_client(client, queue, latencies) for _ in range(clients)))
        wall = time.perf_counter() - start
    if sum(errors):
        raise RuntimeError(f"{sum(errors)} requests failed against {url}")
    return len(images) / wall, latencies


def _predict_in_process(model, paths: list[Path]) -> float:
    start = time.perf_counter()
    model.predict(paths, batch_size=32)
    return len(paths) / (time.perf_counter() - start)


def _predict_command(run: Path, paths: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "visiontune", "predict", str(run), *map(str, paths)]
        + ["--format", "json"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return len(paths) / (time.perf_counter() - start)


def measure(run: Path, paths: list[Path], rounds: int) -> dict:
    import visiontune

    images = [(p.name, p.read_bytes()) for p in paths]
    servers = {mode: Served(run, *args) for mode, args in MODES.items()}
    model = visiontune.load(run)
    results: dict = {}
    try:
        for server in servers.values():  # warm: the first batches of 32 pay for allocations
            asyncio.run(_load(server.url, images[:96], max(CLIENTS)))
        _predict_in_process(model, paths[:32])
        for r in range(rounds):
            for clients in CLIENTS:
                for mode, server in servers.items():
                    speed, latencies = asyncio.run(_load(server.url, images, clients))
                    entry = results.setdefault((mode, clients), {"speed": [], "latency": []})
                    entry["speed"].append(speed)
                    entry["latency"] += latencies
                    print(
                        f"round {r + 1}: {mode}, {clients} clients: {speed:.1f} img/s", flush=True
                    )
            in_process = results.setdefault(("predict (in process)", None), {"speed": []})
            in_process["speed"].append(_predict_in_process(model, paths))
            command = results.setdefault(("visiontune predict (command)", None), {"speed": []})
            command["speed"].append(_predict_command(run, paths))
    finally:
        for server in servers.values():
            server.stop()
    return results


def table(results: dict) -> str:
    rows = [
        "| what | clients | images/s | request p50 | request p99 |",
        "|---|---|---|---|---|",
    ]
    for (mode, clients), entry in results.items():
        speed = statistics.median(entry["speed"])
        latency = entry.get("latency") or []
        p50, p99 = (
            (f"{1000 * np.percentile(latency, q):.0f} ms" for q in (50, 99))
            if latency
            else ("–", "–")
        )
        rows.append(f"| {mode} | {clients or '–'} | {speed:.1f} | {p50} | {p99} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/work/bench/serve"))
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run = args.run or yoga_run(args.work)
    paths = decodable(sorted(p for p in (YOGA / "TEST").rglob("*") if p.is_file()))
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]  # every class
    results = measure(run, paths, args.rounds)
    body = (
        "## Serving: `visiontune serve` under concurrent clients (yoga `head` run, Lite0)\n\n"
        f"{len(paths)} yoga TEST photos, one per request, sent by 1, 8 or 32 concurrent "
        f"clients; {args.rounds} rounds, configurations alternating. Batching on: "
        "`--max-batch 32 --max-wait-ms 5` (the defaults); off: `--max-batch 1`. "
        "images/s is the median over rounds; latencies are per request, over all rounds. The "
        "clients run in one Python process on the same two cores as the server, so at 32 "
        "clients their own work takes a share of the cores from the model.\n\n" + table(results)
    )
    write_section("serve", body, command="python benchmarks/serve.py")
    print(body)


if __name__ == "__main__":
    main()
