"""``ServeConfig``: every option of ``visiontune serve``, its default and its check, in one place
(the command line takes its defaults and help from here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ..errors import VisiontuneError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, what it accepts, and how it stops.

    >>> ServeConfig(max_batch=8).max_upload_bytes
    20971520
    >>> ServeConfig(max_batch=0)
    Traceback (most recent call last):
    ...
    visiontune.errors.VisiontuneError: max_batch must be at least 1, got 0
    """

    host: str = "127.0.0.1"
    port: int = 8000
    # Images that arrive within ``max_wait_ms`` of the first one, up to ``max_batch``, share one
    # forward pass; while a pass runs, the next batch fills up without waiting. 1: no batching.
    max_batch: int = 32
    max_wait_ms: float = 5.0
    # Uploads decoded at once: bounds the memory of decoded photos (each can take 100s of MB)
    # and the threads competing with the forward pass for the cores.
    decode_threads: int = 0  # 0: one per core
    max_queue: int = 512  # images waiting for the model; past it a request gets 503, not a wait
    max_upload_mb: float = 20.0  # one request's body
    max_files: int = 64  # images in one request
    max_top_k: int = 100
    graceful_timeout_s: float = 10.0  # on SIGTERM/Ctrl-C: in-flight requests' time to finish

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_files", "max_top_k"):
            if getattr(self, name) < 1:
                raise VisiontuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "graceful_timeout_s", "decode_threads"):
            if not getattr(self, name) >= 0:
                raise VisiontuneError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not self.max_upload_mb > 0:
            raise VisiontuneError(f"max_upload_mb must be above 0, got {self.max_upload_mb}")
        if not 0 <= self.port <= 65535:
            raise VisiontuneError(f"port must be 0-65535 (0: any free one), got {self.port}")
        if self.max_queue < self.max_batch:
            raise VisiontuneError(
                f"max_queue ({self.max_queue}) must hold at least one batch ({self.max_batch})"
            )

    @property
    def decode_thread_count(self) -> int:
        return self.decode_threads or len(os.sched_getaffinity(0))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def default(cls, name: str):
        """The default of option ``name``."""
        return next(f.default for f in fields(cls) if f.name == name)
