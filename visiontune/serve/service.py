"""``Service``: one loaded model behind the batcher. Uploaded bytes go in, ``predict`` rows come
out: decoded off the event loop, batched with other requests' images, calibrated and flagged
as the CLI's ``predict`` does (``Predictor.rows``), with a Grad-CAM overlay when asked."""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image

from .._runtime import release_free_memory
from ..data.images import ImageDecodeError, decode_bytes, is_pixel_limit
from ..data.transforms import decode_size
from ..errors import VisiontuneError
from ..prediction.base import Outputs, Predictor, check_reject
from ..prediction.ensemble import Ensemble
from ..prediction.explain import check_explainable, explain_decoded
from .batcher import MicroBatcher, ModelThread
from .config import ServeConfig

__all__ = ["RequestError", "Service", "Upload"]


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class _Decoded:
    name: str
    image: Image.Image
    note: str | None


def _largest_decode_size(model: Predictor) -> int | None:
    """The decode size every member can work from (an ensemble's members may differ)."""
    members = model.members if isinstance(model, Ensemble) else [model]
    sizes = [decode_size(m.preprocess) for m in members]
    return None if None in sizes else max(sizes)


def decode_upload(upload: Upload, min_short_side: int | None) -> _Decoded:
    """An upload as an RGB image; ``RequestError`` 400 (empty), 413 (over Pillow's pixel
    limit) or 415 (not an image) otherwise."""
    if not upload.data:
        raise RequestError(400, f"{upload.name}: the file is empty")
    try:
        decoded = decode_bytes(upload.data, name=upload.name, min_short_side=min_short_side)
    except ImageDecodeError as exc:
        if is_pixel_limit(exc):
            raise RequestError(413, f"too many pixels: {exc}") from exc
        raise RequestError(415, f"not an image this server can decode: {exc}") from exc
    return _Decoded(upload.name, decoded.image, decoded.note)


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Service:
    """The model, its worker thread and its batcher; ``predict`` serves one request."""

    def __init__(self, model: Predictor, config: ServeConfig):
        self.model = model
        self.config = config
        self.worker = ModelThread()
        self.batcher = MicroBatcher(
            self._forward,
            self.worker,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000,
            max_queue=config.max_queue,
            coming=lambda: self.decoding,
            on_idle=release_free_memory,
        )
        self.decoding = 0  # uploads being decoded: the batcher waits for them, not for others
        self._decoders: anyio.CapacityLimiter | None = None  # made on the event loop
        self.decode_size = _largest_decode_size(model)
        self.in_flight = 0
        # One pass at start: the first request is not the one that pays for torch's warm-up,
        # and it says whether the model scores unknown images at all.
        grey = Image.new("RGB", (64, 64), (128, 128, 128))
        self.scores_unknown = model.decoded_outputs([grey]).unknown is not None
        try:
            check_explainable(model)
            self.explainable = True
        except VisiontuneError:
            self.explainable = False

    def _forward(self, tta: str, images: list) -> list[tuple[np.ndarray, float | None]]:
        out = self.model.decoded_outputs(images, tta=tta)
        unknown = [None] * len(images) if out.unknown is None else out.unknown.tolist()
        return list(zip(out.probs, unknown, strict=True))

    def check_options(self, *, tta: str, reject: str | None, explain: bool) -> None:
        """Options the model cannot honour, refused before any upload is decoded (422)."""
        try:
            self.model.passes_per_image(tta)
            reject = check_reject(reject)
        except VisiontuneError as exc:
            raise RequestError(422, str(exc)) from exc
        if reject not in (None, "none") and not self.scores_unknown:
            raise RequestError(422, "this model has no rejection statistics; use reject=none")
        if explain and not self.explainable:
            raise RequestError(
                422, "explain=true needs a run folder: an .onnx file has no gradients"
            )

    async def predict(
        self,
        uploads: list[Upload],
        *,
        top_k: int = 1,
        tta: str = "none",
        reject: str | None = None,
        reject_rate: float | None = None,
        explain: bool = False,
    ) -> list[dict]:
        """One row per upload: ``file``, ``top`` and, where the model has rejection statistics,
        ``unknown``/``unknown_score``; ``note`` for a file decoded partially; ``explanation``
        (a PNG data URL) with ``explain``."""
        self.check_options(tta=tta, reject=reject, explain=explain)
        if not uploads:
            raise RequestError(
                400, "no image in the request: send multipart/form-data with one or more files"
            )
        self.decoding += len(uploads)
        try:
            decoded = await asyncio.gather(*(self._decode(u) for u in uploads))
        finally:
            self.decoding -= len(uploads)
        results = await self.batcher.submit(tta, [d.image for d in decoded])
        unknown = None if results[0][1] is None else np.array([r[1] for r in results])
        out = Outputs(np.stack([r[0] for r in results]), np.arange(len(results)), unknown)
        try:
            rows = self.model.rows(
                [d.name for d in decoded], out, top_k=top_k, reject=reject, reject_rate=reject_rate
            )
        except VisiontuneError as exc:  # a reject_rate outside (0, 1)
            raise RequestError(422, str(exc)) from exc
        rows = [{"file": row.pop("path"), **row} for row in rows]
        for row, d in zip(rows, decoded, strict=True):
            if d.note:
                row["note"] = d.note
        if explain:
            await self._explain(rows, decoded, out)
        return rows

    async def _decode(self, upload: Upload) -> _Decoded:
        if self._decoders is None:
            self._decoders = anyio.CapacityLimiter(self.config.decode_thread_count)
        return await anyio.to_thread.run_sync(
            decode_upload, upload, self.decode_size, limiter=self._decoders
        )

    async def _explain(self, rows: list[dict], decoded: list[_Decoded], out: Outputs) -> None:
        images = [d.image for d in decoded]
        top = out.probs.argmax(1).tolist()  # the calibrated (and TTA-averaged) top class
        overlays = await self.worker.call(explain_decoded, self.model, images, top)
        # PNG encoding off the event loop too: a few ms per overlay
        urls = await anyio.to_thread.run_sync(lambda: [_data_url(o) for o in overlays])
        for row, url in zip(rows, urls, strict=True):
            row["explanation"] = url

    async def close(self) -> None:
        await self.batcher.close()
        self.worker.close()
