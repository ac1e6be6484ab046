"""Dynamic batching: images from requests that arrive together share one forward pass.

``ModelThread`` runs every model call, in order, on one thread of its own: the event loop never
waits on a forward pass, and two passes never compete for the cores (each already uses all of
them through torch's intra-op threads). It is a daemon thread so that a pass still running when
the server is told to stop (past its grace period) cannot keep the process alive.

``MicroBatcher`` queues images (bounded: a full queue refuses at once, instead of letting
latency grow without limit) and hands them to the model in batches of up to ``max_batch``: the
first image waits at most ``max_wait`` for company, and only while ``coming()`` says more
images are on their way (being decoded) - a lone request goes at once; while a pass runs, the
images that arrive meanwhile make up the next batch without any wait. Images with different
keys (another ``tta``) never share a pass. The technique is TorchServe's and Triton's dynamic
batching; they are servers of their own, so the few lines are written here on asyncio.

``on_idle`` runs on the model's thread once the queue has been empty for ``IDLE_S``, and after
``BUSY_S`` of passes without such a pause: the server hands freed memory back to the OS there
(``_runtime.release_free_memory``). Without it, batches of every size from 1 to ``max_batch``
leave the tuned heap fragmented and the process grows round after round of load; with it, it
comes back to the same size each time it idles (``benchmarks/serve_memory.py``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from .. import _faults

__all__ = ["BatchStats", "MicroBatcher", "ModelThread", "QueueFull"]

IDLE_S = 1.0  # a pause this long ends a burst
BUSY_S = 10.0  # the longest run of passes between two on_idle calls


class QueueFull(Exception):
    """More images are waiting than the queue holds: the caller should answer 503."""


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # the request went away (cancelled) while its pass ran
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ModelThread:
    """Runs ``call(fn, *args)`` jobs one at a time on a daemon thread; awaitable."""

    def __init__(self, name: str = "visiontune-model"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, loop, future = job
            try:
                result, error = fn(*args), None
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting request
                result, error = None, exc
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Let the thread end after the jobs already queued."""
        self._jobs.put(None)


@dataclass
class BatchStats:
    """What the batcher did so far (``GET /health`` shows it)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    idle_calls: int = 0

    def to_dict(self) -> dict:
        mean = self.images / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "images": self.images,
            "mean_batch": round(mean, 2),
            "largest_batch": self.largest,
            "memory_releases": self.idle_calls,
        }


@dataclass
class _Pending:
    key: Hashable
    item: object
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """``await submit(key, items)`` -> ``run(key, items)``'s results, one per item, computed in
    batches shared with other callers. ``run`` is called on ``worker``'s thread and returns a
    sequence as long as its ``items``."""

    def __init__(
        self,
        run: Callable[[Hashable, list], Sequence],
        worker: ModelThread,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        coming: Callable[[], int] = lambda: 1,
        on_idle: Callable[[], object] | None = None,
    ):
        self.run, self.worker, self.coming, self.on_idle = run, worker, coming, on_idle
        self._idle_done = True  # nothing ran since the last on_idle call
        self._last_idle = time.monotonic()
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    @property
    def released(self) -> bool:
        """Whether ``on_idle`` has run since the last pass (the server is idle and trimmed)."""
        return self._idle_done

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _start(self) -> asyncio.Queue:
        # Started by the first request, on its loop: an app mounted inside another ASGI app
        # gets no lifespan events of its own, so there may be no other moment to start.
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._collect())
        return self._queue

    async def submit(self, key: Hashable, items: Sequence) -> list:
        pending_queue = self._start()
        if pending_queue.qsize() + len(items) > self.max_queue:
            raise QueueFull(
                f"{pending_queue.qsize()} images are waiting for the model (at most "
                f"{self.max_queue}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        pending = [_Pending(key, item, loop.create_future()) for item in items]
        for p in pending:
            pending_queue.put_nowait(p)
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def close(self) -> None:
        """Stop collecting; images still queued get an error instead of waiting forever."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            _settle(self._queue.get_nowait().future, None, RuntimeError("the server stopped"))

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._first()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():  # arrived while the last pass ran: no waiting
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0 or not self.coming():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:  # noqa: UP041 - builtin only from 3.11
                    break
            await self._run(batch)
            self._idle_done = False
            if time.monotonic() - self._last_idle > BUSY_S:
                await self._idle()

    async def _first(self) -> _Pending:
        """The next image; on the way, ``on_idle`` once the queue has been empty ``IDLE_S``."""
        if self.on_idle is None or self._idle_done:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), IDLE_S)
        except asyncio.TimeoutError:  # noqa: UP041 - builtin only from 3.11
            await self._idle()
            return await self._queue.get()

    async def _idle(self) -> None:
        try:
            await self.worker.call(self.on_idle)
        finally:
            self._idle_done, self._last_idle = True, time.monotonic()
            self.stats.idle_calls += 1

    async def _run(self, batch: list[_Pending]) -> None:
        groups: dict[Hashable, list[_Pending]] = {}
        for p in batch:
            if not p.future.done():  # a cancelled request's images are not computed
                groups.setdefault(p.key, []).append(p)
        for key, pending in groups.items():
            try:
                results = await self.worker.call(self._held_run, key, [p.item for p in pending])
            except Exception as exc:  # noqa: BLE001 - each request answers with it
                for p in pending:
                    _settle(p.future, None, exc)
                continue
            self.stats.batches += 1
            self.stats.images += len(pending)
            self.stats.largest = max(self.stats.largest, len(pending))
            for p, result in zip(pending, results, strict=True):
                _settle(p.future, result, None)

    def _held_run(self, key: Hashable, items: list) -> Sequence:
        _faults.hold_batch()  # a test's hold point (no-op unless VISIONTUNE_FAULT asks)
        return self.run(key, items)
