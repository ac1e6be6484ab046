"""``BodyLimit``: an ASGI middleware that refuses a request body over a size, before it is
parsed or spooled to disk.

Starlette's multipart parser limits the number of files and the size of text fields, not of
files; a limit on the whole body is what a reverse proxy (nginx's ``client_max_body_size``)
would give, and this server usually runs without one.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

__all__ = ["BodyLimit", "BodyTooLarge", "too_large_response"]

_DRAIN_FACTOR = 4  # past this many times the limit the connection is dropped, not drained


class BodyTooLarge(Exception):
    """The body grew past the limit while it streamed in (no Content-Length was sent)."""


def too_large_response(limit: int) -> JSONResponse:
    megabytes = limit / (1024 * 1024)
    return JSONResponse(
        {
            "error": f"the upload is larger than this server accepts ({megabytes:g} MB; "
            "visiontune serve --max-upload-mb raises it)",
            "status": 413,
        },
        status_code=413,
    )


class BodyLimit:
    """Answers 413 to a request on ``paths`` whose body exceeds ``max_bytes``."""

    def __init__(self, app, *, max_bytes: int, paths: tuple[str, ...]):
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            # Read (and drop) what the client sends first: a client still writing its body
            # would otherwise see a broken pipe instead of the 413 and its message.
            if int(length) <= _DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive)
            return await too_large_response(self.max_bytes)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, counted, send)

    @staticmethod
    async def _drain(receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
