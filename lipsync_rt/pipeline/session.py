"""One lip-sync session: the streaming graph of design.md, wired for one stream.

```
push_audio ─► audio ─► mel windows ─┐
                                    ├─► join ─► jobs ─► infer (MicroBatcher) ─► blend ─► release ─► video()
push_video ─► camera (FaceTracker) ─┘        └─ no face / idle / dropped: the original frame ──┘
              (avatar mode: prepared frames, boxes and features instead)
audio ─► timeline ─────────────────────── delayed by exactly D ──────────────────────────────► audio()
```

Every stage is one asyncio task; heavy work runs in executors (face tracking in its own thread,
crops/inputs/blending in another, the engine in the MicroBatcher's). In live mode the session paces
its own outputs on the audio-sample clock (release of media time t at T0 + t + D), so sinks never
pace; a frame whose result is not ready by then leaves as the original picture and is counted, so D
never grows. Offline, queues are bounded and waiting puts throttle the producers instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from typing import AsyncIterator, Optional

import numpy as np

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.bench.common import percentiles
from lipsync_rt.errors import LipSyncError

from .avatar import Avatar
from .clock import MediaClock, lookahead, sleep_until
from .config import SessionConfig, SessionStats
from .messages import Job, MelWindow, OutputAudio, OutputFrame, Result, SourceFrame
from .pcm import Resampler, to_mono_float
from .queues import DropOldestQueue
from .timeline import MelFramer, Timeline

log = logging.getLogger(__name__)

_END = object()          # end of stream marker on every queue
_TICK = object()         # live clock tick on the audio input queue
_PIECE = 1600            # samples per StreamingMel push (100 ms): keeps each loop step short


class LipSyncSession:
    """A face (avatar or pushed camera frames) plus pushed speech in, lip-synced frames and audio out.

    ``engine`` is an ``Engine`` (wrapped in a MicroBatcher of ``config.batch_size``, closed with the
    session) or a shared ``MicroBatcher`` (left open). ``avatar`` None means camera mode.
    """

    def __init__(self, engine, *, avatar: Optional[Avatar] = None, config: SessionConfig = SessionConfig()) -> None:
        self.config = config
        self.avatar = avatar
        # A model whose audio window starts earlier (mel_offset < 0) needs less audio ahead of each frame.
        self.mel_offset = int(getattr(getattr(engine, "engine", engine), "mel_offset", 0))
        self.lookahead = lookahead(self.mel_offset)
        self.delay = float("nan")
        self.clock = MediaClock(config.fps, mel_offset=self.mel_offset)
        self._engine_arg = engine
        self._batcher = None
        self._own_batcher = False
        self._use_features = False
        self._blender = None
        self._started = self._closed = self._input_ended = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._tasks: list[asyncio.Task] = []
        self._error: Optional[BaseException] = None
        self._work_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._track_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._tracker = None

        self._audio_in: asyncio.Queue = asyncio.Queue()
        self._camera: deque = deque(maxlen=max(8, int(2 * config.fps)))   # live: (arrival, image, capture)
        self._camera_in: asyncio.Queue = asyncio.Queue()                  # offline: (image, capture) | _END
        self._camera_count: Optional[int] = None                          # offline: frames pushed, at the end
        self._camera_last: Optional[SourceFrame] = None
        self._held = None
        self._timeline = Timeline(store=config.live)
        self._timeline_changed = asyncio.Event()
        self._framer = MelFramer(self.clock)
        self._total_frames: Optional[int] = None
        self._pictures: dict[int, Optional[SourceFrame]] = {}
        self._pictures_changed = asyncio.Event()
        self._sources: dict[int, SourceFrame] = {}
        self._results: dict[int, Result] = {}
        self._results_changed = asyncio.Event()
        self._next_release = 0

        live, size = config.live, config.queue_frames
        self._mel_q: asyncio.Queue = asyncio.Queue(0 if live else size)
        self._jobs = DropOldestQueue(size, self._drop_job) if live else asyncio.Queue(size)
        self._blend_q: asyncio.Queue = asyncio.Queue(2)
        self._video_out = DropOldestQueue(max(size, int(2 * config.fps)), self._drop_output) if live \
            else asyncio.Queue(size)
        self._audio_out: asyncio.Queue = asyncio.Queue()

        self.frames_out = self.frames_generated = self.frames_dropped = self.frames_idle = 0
        self.engine_errors = self.frames_without_face = self.audio_samples_out = 0
        self._latency: deque[float] = deque(maxlen=100_000)
        self._overhead: deque[float] = deque(maxlen=100_000)
        self._stage_ms: dict[str, deque[float]] = {k: deque(maxlen=100_000)
                                                   for k in ("track", "prepare", "infer", "blend")}

    # ------------------------------------------------------------------------------------------
    # Public API

    async def start(self) -> None:
        """Set up the engine, measure the processing budget (live), start the clock and the stages."""
        if self._started:
            return
        if self._closed:
            raise LipSyncError("this session is closed; start a new one")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise
        self.clock.start()
        stages = [self._audio_stage(), self._join_stage(), self._infer_stage(), self._blend_stage(),
                  self._release_stage()]
        if self.avatar is None:
            stages.append(self._camera_stage())
        if self.config.live:
            stages += [self._tick_stage(), self._audio_release_stage()]
        for coro in stages:
            name = coro.__name__.strip("_")
            self._tasks.append(self._loop.create_task(self._guard(coro), name=f"lipsync-{name}"))

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue speech (any rate; mono or (n, channels); int16 or float). Never blocks; callable from
        any thread once started."""
        if self._input_ended:
            raise LipSyncError("push_audio after end_of_input")
        samples = to_mono_float(pcm)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise LipSyncError(f"sample_rate must be a positive integer, got {sample_rate}")
        item = (samples.copy() if samples is pcm else samples, int(sample_rate), time.monotonic())
        self._call(self._audio_in.put_nowait, item)

    def push_video(self, image: np.ndarray, capture_time: Optional[float] = None) -> None:
        """Camera mode: queue one BGR uint8 frame (``capture_time``: its ``time.monotonic()``)."""
        if self.avatar is not None:
            raise LipSyncError("push_video is for camera mode; this session has an avatar")
        if self._input_ended:
            raise LipSyncError("push_video after end_of_input")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise LipSyncError(f"video frames must be BGR uint8 HxWx3, got {image.dtype} {image.shape}")
        now = time.monotonic()
        item = (image, now if capture_time is None else float(capture_time), now)
        self._call(self._push_video_now, item)

    def end_of_input(self) -> None:
        """No more input: what is pending is finished and released, then the iterators end."""
        if self._input_ended:
            return
        self._input_ended = True
        self._call(self._audio_in.put_nowait, _END)
        self._call(self._camera_in.put_nowait, _END)

    async def video(self) -> AsyncIterator[OutputFrame]:
        """The output frames in order (one consumer)."""
        while True:
            item = await self._video_out.get()
            if item is _END:
                self._end(self._video_out)             # later calls end at once
                break
            yield item
        if self._error is not None:
            raise self._error

    async def audio(self) -> AsyncIterator[OutputAudio]:
        """The session's audio, delayed by exactly D in live mode (one consumer)."""
        while True:
            item = await self._audio_out.get()
            if item is _END:
                self._audio_out.put_nowait(_END)
                break
            yield item
        if self._error is not None:
            raise self._error

    def stats(self) -> SessionStats:
        return SessionStats(
            frames_out=self.frames_out, frames_generated=self.frames_generated,
            frames_dropped=self.frames_dropped, frames_idle=self.frames_idle,
            engine_errors=self.engine_errors, frames_without_face=self.frames_without_face,
            audio_samples_out=self.audio_samples_out, silence_samples=self._timeline.silence_samples,
            latency_ms=percentiles(self._latency), overhead_ms=percentiles(self._overhead),
            delay=self.delay, lookahead=self.lookahead,
            stage_ms={k: percentiles(v) for k, v in self._stage_ms.items()},
        )

    async def close(self) -> None:
        """Stop everything this session started; idempotent. The iterators end."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_batcher and self._batcher is not None:
            await self._batcher.close()
        if self._track_pool is not None:
            if self._tracker is not None:
                await self._loop.run_in_executor(self._track_pool, self._tracker.close)
            self._track_pool.shutdown(wait=True)
        if self._work_pool is not None:
            self._work_pool.shutdown(wait=True)
        self._finish_outputs()

    async def __aenter__(self) -> "LipSyncSession":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    # ------------------------------------------------------------------------------------------
    # Setup

    async def _setup(self) -> None:
        from lipsync_rt.blend import Blender
        from lipsync_rt.engine.batcher import MicroBatcher

        cfg = self.config
        try:
            self._blender = Blender(cfg.blend, cache_size=max(16, len(self.avatar) if self.avatar else 16))
        except ValueError as e:
            raise LipSyncError(str(e)) from None
        if isinstance(self._engine_arg, MicroBatcher):
            self._batcher = self._engine_arg
        else:
            self._batcher = MicroBatcher(self._engine_arg, max_batch=cfg.batch_size, max_wait_ms=cfg.max_wait_ms)
            self._own_batcher = True
        self._use_features = (self.avatar is not None and cfg.encoder_cache and self.avatar.features is not None
                              and callable(getattr(self._batcher.engine, "infer_encoded", None)))
        self._work_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-work")
        if self.avatar is None:
            from lipsync_rt.face import FaceTracker

            self._track_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-track")
            self._tracker = await self._loop.run_in_executor(
                self._track_pool, lambda: FaceTracker(keyframe_interval=cfg.keyframe_interval, pads=cfg.pads))
        if cfg.live:
            await self._warm_up()
            overhead = cfg.overhead_ms / 1000 if cfg.overhead_ms is not None else await self._auto_overhead()
        else:
            overhead = (cfg.overhead_ms or 0.0) / 1000
        self.overhead = overhead
        self.delay = self.lookahead + overhead
        self.clock.delay = self.delay

    async def _engine_call(self, frames: int) -> None:
        """One engine request of ``frames`` frames on zero inputs, the way the session will call it."""
        mel = np.zeros((frames, 1, 80, 16), np.float32)
        if self._use_features:
            row = int(np.flatnonzero(self.avatar.rows >= 0)[0])
            await self._batcher.infer_encoded(mel, self.avatar.features.take([self.avatar.rows[row]] * frames))
        else:
            await self._batcher.infer(mel, np.zeros((frames, 6, 96, 96), np.float32))

    async def _warm_up(self) -> None:
        """Live: call the engine once at every batch size the session can send before the clock starts.
        The first call at a new size builds kernels (tens of ms on the CPU), which would otherwise
        make the first frames of that size miss their release time."""
        for frames in range(1, self.config.batch_size + 1):
            try:
                await self._engine_call(frames)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken engine shows up per batch later, counted
                log.warning("engine warm-up failed: %s", e)
                return

    async def _auto_overhead(self) -> float:
        """D - L from a measurement: the audio grace + 1.5 x the median of five one-frame engine calls
        (through the batcher, so its deadline and thread hop are included) + 10 ms for crops and
        blending. Measured p99 overheads stay well inside this (benchmarks/RESULTS.md)."""
        times = []
        for _ in range(5):
            started = time.perf_counter()
            try:
                await self._engine_call(1)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken engine shows up per batch later, counted
                log.warning("engine warm-up failed: %s", e)
                return 0.1
            times.append(time.perf_counter() - started)
        return self.config.audio_grace_ms / 1000 + 1.5 * float(np.median(times)) + 0.010

    # ------------------------------------------------------------------------------------------
    # Plumbing

    def _call(self, fn, *args) -> None:
        """Run ``fn`` on the session's loop: directly from its thread, thread-safely from others."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def _push_video_now(self, item) -> None:
        image, capture, arrival = item
        if self.config.live:
            self._camera.append((arrival, image, capture))
        else:
            self._camera_in.put_nowait((image, capture))

    async def _guard(self, coro) -> None:
        """A stage that fails ends the session (the iterators re-raise its error); cancelling is quiet."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded and re-raised to the consumer
            log.exception("lip-sync stage failed")
            if self._error is None:
                self._error = e
            self._loop.create_task(self.close())

    def _finish_outputs(self) -> None:
        self._end(self._video_out)
        self._end(self._audio_out)

    @staticmethod
    def _end(queue) -> None:
        """Put the end marker without waiting; a full bounded queue loses its oldest items (closing)."""
        if isinstance(queue, DropOldestQueue):
            queue.put_nowait(_END, droppable=False)
            return
        while True:
            try:
                queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                queue.get_nowait()   # closing: nobody will read what is left

    def _record(self, stage: str, started: float) -> None:
        self._stage_ms[stage].append((time.perf_counter() - started) * 1000)

    # ------------------------------------------------------------------------------------------
    # Audio: pushed PCM -> timeline -> mel windows; silence for audio that is late (live)

    async def _tick_stage(self) -> None:
        while not self._input_ended:
            await asyncio.sleep(0.01)
            self._audio_in.put_nowait(_TICK)

    async def _audio_stage(self) -> None:
        resampler: Optional[Resampler] = None
        grace = self.config.audio_grace_ms / 1000 * SAMPLE_RATE
        live = self.config.live
        while True:
            item = await self._audio_in.get()
            if item is _TICK:
                if self._input_ended:
                    continue
                due = math.floor(self.clock.sample_due(time.monotonic()) - grace)
                if due > self._timeline.end:
                    await self._write(np.zeros(due - self._timeline.end, np.float32), time.monotonic(), True)
                continue
            if item is _END:
                if resampler is not None:
                    await self._write(resampler.flush(), time.monotonic(), False)
                await self._emit_windows(self._framer.flush(), time.monotonic())
                self._total_frames = self._framer.next_index
                self._timeline.closed = True
                self._timeline_changed.set()
                await self._mel_q.put(_END)
                if not live:
                    self._audio_out.put_nowait(_END)
                return
            samples, rate, arrival = item
            if resampler is None or resampler.rate != rate:
                if resampler is not None:
                    await self._write(resampler.flush(), arrival, False)
                resampler = Resampler(rate)
            samples = resampler(samples)
            if live:
                # Audio that comes after a gap is taken as captured just before it arrived.
                due = math.floor(self.clock.sample_due(arrival) - grace)
                gap = due - samples.size - self._timeline.end
                if gap > 0:
                    await self._write(np.zeros(gap, np.float32), arrival, True)
            await self._write(samples, arrival, False)

    async def _write(self, samples: np.ndarray, arrival: float, silence: bool) -> None:
        for a in range(0, max(samples.size, 1), _PIECE):
            piece = samples[a:a + _PIECE]
            if piece.size == 0:
                return
            start = self._timeline.append(piece, silence)
            if not self.config.live:
                self._audio_out.put_nowait(OutputAudio(piece, start, SAMPLE_RATE))
                self.audio_samples_out += piece.size
            self._timeline_changed.set()
            await self._emit_windows(self._framer.push(piece.astype(np.float32, copy=False)), arrival)
            if samples.size > _PIECE:
                await asyncio.sleep(0)

    async def _emit_windows(self, windows, arrival: float) -> None:
        for index, window in windows:
            a, b = self._framer.window_samples(index)
            idle = self.config.live and self._timeline.is_silence(a, b)
            await self._mel_q.put(MelWindow(index, window, arrival if self.config.live else None, idle))

    async def _audio_release_stage(self) -> None:
        """Live: release the timeline in ``audio_chunk`` pieces at T0 + pts/16000 + D."""
        pos, chunk = 0, self.config.audio_chunk
        while True:
            await sleep_until(self.clock.audio_release_time(pos))
            while self._timeline.end < pos + chunk and not self._timeline.closed:
                self._timeline_changed.clear()
                await self._timeline_changed.wait()
            stop = min(pos + chunk, self._timeline.end)
            if stop <= pos:
                break
            self._audio_out.put_nowait(OutputAudio(self._timeline.read(pos, stop), pos, SAMPLE_RATE))
            self.audio_samples_out += stop - pos
            pos = stop
            self._timeline.discard_before(pos)
        self._audio_out.put_nowait(_END)

    # ------------------------------------------------------------------------------------------
    # Video: the picture for each frame index (avatar or camera)

    async def _camera_stage(self) -> None:
        if self.config.live:
            await self._camera_live()
        else:
            await self._camera_offline()

    async def _camera_live(self) -> None:
        """At T0 + t_i take the newest camera frame that has arrived and track its face. A tracker
        that fell more than a frame behind skips tracking (those frames pass through, counted)."""
        i = 0
        period = float(self.clock.time_base)
        while True:
            deadline = self.clock.capture_deadline(i)
            await sleep_until(deadline)
            if self._total_frames is not None and i >= self._total_frames:
                return
            picture = next(((img, cap) for arr, img, cap in reversed(self._camera) if arr <= deadline), None)
            if picture is None:
                self._set_picture(i, None)
            elif time.monotonic() - deadline > period:
                self._set_picture(i, SourceFrame(i, picture[0], None, picture[1], dropped=True))
            else:
                self._set_picture(i, await self._track(i, *picture))
            i += 1

    async def _camera_offline(self) -> None:
        """Offline: frame i is the i-th pushed frame; when the video ends first, the last one repeats."""
        i, last = 0, None
        while True:
            item = await self._camera_in.get()
            if item is _END:
                break
            last = await self._track(i, *item)
            self._set_picture(i, last)
            i += 1
        self._camera_last = last
        self._camera_count = i
        self._pictures_changed.set()

    async def _track(self, index: int, image: np.ndarray, capture: Optional[float]) -> SourceFrame:
        started = time.perf_counter()
        track = await self._loop.run_in_executor(self._track_pool, self._tracker.update, image)
        self._record("track", started)
        return SourceFrame(index, image, track, capture)

    def _set_picture(self, index: int, frame: Optional[SourceFrame]) -> None:
        self._pictures[index] = frame
        self._pictures_changed.set()

    async def _picture(self, index: int) -> Optional[SourceFrame]:
        if self.avatar is not None:
            return self._avatar_frame(index)
        while index not in self._pictures:
            if self._camera_count is not None:          # offline video ended before the audio
                last = self._camera_last
                return None if last is None else SourceFrame(index, last.image, last.track, last.capture_time)
            self._pictures_changed.clear()
            await self._pictures_changed.wait()
        for old in [k for k in self._pictures if k < index]:
            del self._pictures[old]
        return self._pictures.pop(index)

    def _avatar_frame(self, index: int) -> SourceFrame:
        j = self.avatar.index(index, self.config.avatar_loop)
        return SourceFrame(index, self.avatar.frames[j], self.avatar.track(j), None, avatar_index=j)

    # ------------------------------------------------------------------------------------------
    # Join: mel window + picture -> a job for the engine, or an immediate pass-through

    async def _join_stage(self) -> None:
        while True:
            mel = await self._mel_q.get()
            if mel is _END:
                break
            frame = await self._picture(mel.index)
            if frame is None:                  # camera mode before the first camera frame: no output
                self._add_result(Result(mel.index, None, False, None, time.monotonic(), "no_picture"))
                continue
            self._sources[mel.index] = frame
            if frame.dropped:
                self._pass(frame, "dropped")
            elif frame.track is None:
                self._pass(frame, "no_face")
            elif mel.idle and self.config.skip_silence:
                self._pass(frame, "idle")
            else:
                await self._jobs.put(Job(frame, mel))
        if self.config.live:
            self._end(self._jobs)
        else:
            await self._jobs.put(_END)

    def _pass(self, frame: SourceFrame, reason: str) -> None:
        self._add_result(Result(frame.index, frame.image, False, frame.capture_time, time.monotonic(), reason))

    def _drop_job(self, job) -> None:
        if job is not _END:
            self._pass(job.frame, "dropped")

    def _drop_output(self, frame) -> None:
        if frame is not _END:
            self.frames_dropped += 1

    # ------------------------------------------------------------------------------------------
    # Infer: batches of jobs through the (micro-batched) engine

    async def _next_batch(self) -> Optional[list[Job]]:
        """Live: what is waiting, up to batch_size (never wait for more). Offline: the frames of one
        block of batch_size frame indices, as ``infer.lipsync_frames`` batches them."""
        size = self.config.batch_size
        first = self._held if self._held is not None else await self._jobs.get()
        self._held = None
        if first is _END:
            return None
        batch = [first]
        if self.config.live:
            while len(batch) < size and not self._jobs.empty() and self._jobs.peek() is not _END:
                batch.append(self._jobs.get_nowait())
            return batch
        block = first.index // size
        while True:
            job = await self._jobs.get()
            if job is _END or job.index // size != block:
                self._held = job
                return batch
            batch.append(job)

    async def _infer_stage(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                break
            if self.config.live:
                now = time.monotonic()
                late = [j for j in batch if self.clock.release_time(j.index) <= now]
                for job in late:
                    self._pass(job.frame, "dropped")
                batch = [j for j in batch if self.clock.release_time(j.index) > now]
                if not batch:
                    continue
            try:
                started = time.perf_counter()
                mel, face = await self._loop.run_in_executor(self._work_pool, self._prepare, batch)
                self._record("prepare", started)
                started = time.perf_counter()
                if self._use_features:
                    out = await self._batcher.infer_encoded(mel, face)
                else:
                    out = await self._batcher.infer(mel, face)
                self._record("infer", started)
                if len(out) != len(batch):
                    raise RuntimeError(f"engine returned {len(out)} faces for {len(batch)} inputs")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one failed batch passes its frames through
                self.engine_errors += 1
                log.warning("engine error on frames %d-%d (passed through): %s",
                            batch[0].index, batch[-1].index, e)
                for job in batch:
                    self._pass(job.frame, "error")
                continue
            await self._blend_q.put((batch, out))
        await self._blend_q.put(_END)

    def _prepare(self, batch: list[Job]):
        from lipsync_rt.lipsync import crop_face, face_input, mel_input

        mel = mel_input([job.mel.window for job in batch])
        if self.avatar is not None:
            rows = [int(self.avatar.rows[job.frame.avatar_index]) for job in batch]
            if self._use_features:
                return mel, self.avatar.features.take(rows)
            return mel, face_input(self.avatar.crops[rows])
        crops = np.stack([crop_face(job.frame.image, job.frame.track.box) for job in batch])
        return mel, face_input(crops)

    async def _blend_stage(self) -> None:
        while True:
            item = await self._blend_q.get()
            if item is _END:
                break
            batch, out = item
            started = time.perf_counter()
            images = await self._loop.run_in_executor(self._work_pool, self._blend, batch, out)
            self._record("blend", started)
            now = time.monotonic()
            for job, image in zip(batch, images):
                self._add_result(Result(job.index, image, True, job.capture_time, now))
                if self.config.live:
                    due = self.clock.t0 + self.clock.frame_time(job.index) + self.lookahead
                    self._overhead.append((now - due) * 1000)

    def _blend(self, batch: list[Job], out: np.ndarray) -> list[np.ndarray]:
        paste = self._blender.paste
        return [paste(job.frame.image, face, job.frame.track.box, job.frame.track.landmarks)
                for job, face in zip(batch, out)]

    # ------------------------------------------------------------------------------------------
    # Release: frames in order, paced at T0 + t_i + D in live mode

    def _add_result(self, result: Result) -> None:
        if result.index < self._next_release:
            return                              # too late: its slot already left as the original
        self._results[result.index] = result
        self._results_changed.set()

    async def _release_stage(self) -> None:
        i = 0
        live = self.config.live
        while True:
            if live:
                await sleep_until(self.clock.release_time(i))
            else:
                while i not in self._results and not self._ended_before(i):
                    self._results_changed.clear()
                    await self._results_changed.wait()
            if self._ended_before(i):
                break
            result = self._results.pop(i, None)
            self._next_release = i + 1
            source = self._sources.pop(i, None)
            if result is None and live:
                if source is None and self.avatar is not None:
                    source = self._avatar_frame(i)
                if source is not None:
                    result = Result(i, source.image, False, source.capture_time, time.monotonic(), "dropped")
            if result is not None and result.image is not None:
                await self._emit(result)
            i += 1
        if live:
            self._end(self._video_out)
        else:
            await self._video_out.put(_END)

    def _ended_before(self, index: int) -> bool:
        return self._total_frames is not None and index >= self._total_frames

    async def _emit(self, result: Result) -> None:
        if result.reason == "dropped":
            self.frames_dropped += 1
        elif result.reason == "idle":
            self.frames_idle += 1
        elif result.reason == "no_face":
            self.frames_without_face += 1
        now = time.monotonic()
        if result.generated:
            self.frames_generated += 1
            if result.capture_time is not None:
                self._latency.append((now - result.capture_time) * 1000)
        frame = OutputFrame(result.image, result.index, self.clock.time_base, result.generated, result.capture_time)
        self.frames_out += 1
        await self._video_out.put(frame)       # live: never waits (drops the oldest); offline: backpressure
