"""A micro-batcher: many streams share one engine, each sending a few frames at a time.

An engine's cost per frame falls steeply with batch size (kernel launches and weight reads are paid
once per batch), while each live stream only has a few frames ready every 40 ms. The batcher runs
the requests waiting for the engine as one batch in a worker thread (so the event loop keeps serving
audio and network I/O meanwhile), and hands each caller back exactly its own rows. Requests that come
while the engine is busy form the next batch, so batches grow with the load by themselves; by default
an idle engine starts at once. ``max_wait_ms`` makes it wait that long after the first request, or
until ``max_batch`` frames are waiting: that only pays where the per-call cost dominates and requests
come a few ms apart. On a 2-core CPU serving three 25 fps sessions, whose frames fall due at unrelated
times, a 4 ms wait merged little and put 4 ms on almost every frame (``bench webrtc --profile``).

Choices worth knowing:

- Requests of ``infer`` and ``infer_encoded`` gather in separate lanes (their inputs differ), and one
  lock makes sure the engine is never called from two threads at once, whatever the executor.
- A request of more than ``max_batch`` frames is split into parts of at most ``max_batch`` frames,
  which queue like any other request; the caller gets the parts' rows back joined, in order, or the
  first error among them. Batches never exceed ``max_batch``, so an engine built for a maximum batch
  (TensorRT's profile, CUDA graph buckets) sees nothing bigger.
- A batch takes whole requests in arrival order; it may therefore run with fewer than ``max_batch``
  frames when the next request would not fit.
- An exception raised by the engine fails exactly the requests of that batch, with that exception;
  the batcher goes on serving. Malformed inputs are refused when submitted (``ValueError``), and
  requests whose feature shapes differ never share a batch, so one caller's mistake cannot fail
  a batch shared with others.
- The batcher belongs to the event loop of its first request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import LipSyncError
from .protocol import split_engine

MEL_ROW = (1, 80, 16)
FACE_ROW = (6, 96, 96)


@dataclass(frozen=True)
class BatcherStats:
    """Counts since the batcher was made: every engine call is a batch, failed ones included."""

    batches: int
    frames: int
    errors: int  # batches whose engine call raised
    sizes: dict[int, int]  # batch size (frames) -> number of batches of that size

    @property
    def mean_batch(self) -> float:
        return self.frames / self.batches if self.batches else 0.0


@dataclass
class _Request:
    arrays: tuple  # (mel, face) or (mel, f0, ..., f6), float32, batch first
    frames: int
    future: asyncio.Future
    arrival: float

    @property
    def shapes(self) -> tuple:
        return tuple(a.shape[1:] for a in self.arrays)


class _Lane:
    """Requests of one kind waiting for the engine, and the task that forms them into batches."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests: collections.deque[_Request] = collections.deque()
        self.wakeup = asyncio.Event()
        self.task: Optional[asyncio.Task] = None

    def live(self) -> list[_Request]:
        return [r for r in self.requests if not r.future.done()]  # done before running: caller cancelled

    def waiting_frames(self) -> int:
        return sum(r.frames for r in self.live())

    def take(self, max_batch: int) -> list[_Request]:
        """The oldest requests that fit in one batch and have the same row shapes as the oldest."""
        batch: list[_Request] = []
        rest: collections.deque[_Request] = collections.deque()
        frames, full = 0, False
        for request in self.live():
            same = not batch or request.shapes == batch[0].shapes
            if not full and same and frames + request.frames <= max_batch:
                batch.append(request)
                frames += request.frames
            else:
                full = full or same  # keep arrival order: nothing of these shapes jumps the queue
                rest.append(request)
        self.requests = rest
        return batch


def _run_batch(engine, kind: str, batch: Sequence[tuple]) -> np.ndarray:
    """In the worker thread: join the requests' inputs (a copy best kept off the event loop), then infer."""
    joined = [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*batch)]
    if kind == "infer":
        return engine.infer(joined[0], joined[1])
    return engine.infer_encoded(joined[0], joined[1:])


class MicroBatcher:
    """Shares ``engine`` among concurrent callers; see the module docstring for the rules."""

    def __init__(
        self,
        engine,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if int(max_batch) < 1:
            raise LipSyncError(f"max_batch must be at least 1, got {max_batch}")
        if not max_wait_ms >= 0:
            raise LipSyncError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.engine = engine
        self.name = f"batched {getattr(engine, 'name', type(engine).__name__)}"
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-engine")
        self._lanes: dict[str, _Lane] = {}  # "infer" and "infer_encoded"
        self._engine_lock: Optional[asyncio.Lock] = None
        self._closed = False
        self._batches = self._frames = self._errors = 0
        self._sizes: collections.Counter[int] = collections.Counter()

    # -- public API ------------------------------------------------------------------------------

    async def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        """``[k,1,80,16]``, ``[k,6,96,96]`` -> ``[k,3,96,96]``: this caller's rows, in order."""
        return await self._submit("infer", [mel, face], (MEL_ROW, FACE_ROW))

    async def infer_encoded(self, mel: np.ndarray, features: Sequence[np.ndarray]) -> np.ndarray:
        """As :meth:`infer`, on face-encoder features (``SplitEngine.encode_face``); needs a SplitEngine."""
        if split_engine(self.engine) is None:
            raise LipSyncError(f"engine {self.name!r} cannot run encoded face features (it is not a SplitEngine)")
        return await self._submit("infer_encoded", [mel, *features], None)

    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._frames, self._errors, dict(sorted(self._sizes.items())))

    async def close(self) -> None:
        """Fails waiting requests with ``LipSyncError("batcher closed")``; a batch already running finishes."""
        if self._closed:
            return
        self._closed = True
        for lane in self._lanes.values():
            while lane.requests:
                request = lane.requests.popleft()
                if not request.future.done():
                    request.future.set_exception(LipSyncError("batcher closed"))
            lane.wakeup.set()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- internals -------------------------------------------------------------------------------

    async def _submit(self, kind: str, arrays: list, rows: Optional[tuple]) -> np.ndarray:
        if self._closed:
            raise LipSyncError("batcher closed")
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        frames = arrays[0].shape[0] if arrays[0].ndim else 0
        if frames < 1:
            raise ValueError(f"{kind}: a request needs at least one frame")
        got = [tuple(a.shape[1:]) for a in arrays]
        bad = any(a.ndim != 4 or a.shape[0] != frames for a in arrays) or got[0] != MEL_ROW
        if bad or (rows is not None and tuple(got) != rows):
            raise ValueError(
                f"{kind}: inputs of shapes {[list(a.shape) for a in arrays]} are not [k, ...] batches of "
                f"the same k with mel rows {list(MEL_ROW)}" + (f" and face rows {list(FACE_ROW)}" if rows else "")
            )
        lane = self._lane(kind)
        loop = asyncio.get_running_loop()
        idle = not lane.live()
        futures = []
        for start in range(0, frames, self.max_batch):
            stop = min(start + self.max_batch, frames)
            future = loop.create_future()
            lane.requests.append(_Request(tuple(a[start:stop] for a in arrays), stop - start, future, loop.time()))
            futures.append(future)
        if idle or lane.waiting_frames() >= self.max_batch:
            lane.wakeup.set()  # a first request starts the collector's clock; a full batch goes now
        if len(futures) == 1:
            return await futures[0]
        try:
            parts = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()  # parts not yet run are skipped
            raise
        return np.concatenate(parts)

    def _lane(self, kind: str) -> _Lane:
        lane = self._lanes.get(kind)
        if lane is None:
            lane = self._lanes[kind] = _Lane(kind)
        if self._engine_lock is None:
            self._engine_lock = asyncio.Lock()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(self._collect(lane), name=f"batcher {kind}")
        return lane

    async def _collect(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            live = lane.live()
            if not live:
                lane.requests.clear()
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            deadline = live[0].arrival + self.max_wait
            while not self._closed and lane.waiting_frames() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                lane.wakeup.clear()
                try:
                    await asyncio.wait_for(lane.wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if self._closed:
                break
            batch = lane.take(self.max_batch)
            if batch:
                await self._run(lane.kind, batch)

    async def _run(self, kind: str, batch: list[_Request]) -> None:
        assert self._engine_lock is not None
        async with self._engine_lock:
            if self._closed:
                error: BaseException = LipSyncError("batcher closed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                return
            frames = sum(r.frames for r in batch)
            self._batches += 1
            self._frames += frames
            self._sizes[frames] += 1
            loop = asyncio.get_running_loop()
            try:
                out = await loop.run_in_executor(
                    self._executor, _run_batch, self.engine, kind, [r.arrays for r in batch]
                )
                out = np.asarray(out)
                if out.shape[:1] != (frames,):
                    raise RuntimeError(f"engine {self.name!r} returned {out.shape[:1]} rows for a batch of {frames}")
            except Exception as error:  # noqa: BLE001 - the batch's callers get it, the batcher lives on
                self._errors += 1
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                return
        start = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(out[start : start + request.frames])
            start += request.frames
