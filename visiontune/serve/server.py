"""``run_server``: serve an app with uvicorn on a socket bound here, so the address printed is
the one listening (``--port 0`` picks a free port: tests and scripts read it from the line)."""

from __future__ import annotations

import signal
import socket

import uvicorn

from .config import ServeConfig

__all__ = ["bind", "run_server"]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets that say they are TCP, and with it on, every response on a kept-alive connection
    # waits ~40 ms for the client's delayed ACK (h11 writes headers and body separately).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(app, config: ServeConfig, *, announce=print, log_level: str = "warning") -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; in-flight requests get ``graceful_timeout_s`` to
    finish (past it they are cancelled: their clients see the connection close, none hangs)."""
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    announce(f"visiontune serve: listening on http://{shown}:{port}/ (Ctrl-C stops)")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=config.graceful_timeout_s,
            access_log=log_level in ("info", "debug", "trace"),
        )
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; a SIGTERM answered
    # by a clean shutdown is then a normal exit (0), not a death by signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
