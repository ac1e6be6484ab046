"""``visiontune serve``'s memory under repeated load: busy, and once idle.

    python benchmarks/serve_memory.py [--run RUN] [--rounds 5]

One server (a yoga ``head`` run; ``--max-batch 32``, the default) gets ``--rounds`` rounds of
32 concurrent clients x 20 requests of one yoga TEST photo each (32 photos, every class). After
each round the script reads the server's resident memory (``/proc/PID/status``) at once (busy),
then again once ``GET /health`` says ``"idle": true`` - the batcher has seen a second without
work and handed freed heap memory back to the OS (``_runtime.release_free_memory``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402
from serve import Served, _load, decodable, yoga_run  # noqa: E402


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def idle_rss(server: Served) -> float:
    import httpx

    deadline = time.monotonic() + 60
    while not httpx.get(f"{server.url}/health").json()["idle"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the server never went idle")
        time.sleep(0.05)
    return rss_mib(server.proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/work/bench/serve"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = args.run or yoga_run(args.work)
    paths = decodable(sorted(p for p in (YOGA / "TEST").rglob("*") if p.is_file()))[::10][:32]
    images = [(p.name, p.read_bytes()) for p in paths]
    server = Served(run)
    rows = ["| after | requests | busy RSS | idle RSS |", "|---|---|---|---|"]
    try:
        asyncio.run(_load(server.url, images, 32))  # warm
        start = idle_rss(server)
        rows.append(f"| warm-up | {len(images)} | – | {start:,.0f} MiB |")
        for r in range(args.rounds):
            asyncio.run(_load(server.url, images * 20, 32))
            busy = rss_mib(server.proc.pid)
            rows.append(
                f"| round {r + 1} | {len(images) * 20} | {busy:,.0f} MiB "
                f"| {idle_rss(server):,.0f} MiB |"
            )
    finally:
        server.stop()
    body = (
        "## Serving: memory under repeated load (yoga `head` run, Lite0)\n\n"
        f"{args.rounds} rounds of 32 concurrent clients x 20 requests (one photo each). Busy: "
        "read right after a round; idle: once `/health` says the server is idle (it has "
        "handed freed heap memory back to the OS).\n\n" + "\n".join(rows)
    )
    write_section("serve-memory", body, command="python benchmarks/serve_memory.py")
    print(body)


if __name__ == "__main__":
    main()
