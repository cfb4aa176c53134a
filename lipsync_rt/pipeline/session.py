"""One lip-sync session: the streaming graph for one stream, wired from its stages.

```
push_audio ─► audio ──► mel windows ─┐
                                     ├─► picture ─► jobs ─► infer ─► blend ─┐
push_video ─► camera ─► pictures ────┘       └── passed through ────────────┴─► release ─► video()
              (avatar mode: the prepared avatar's frames instead)                  │
              audio ─► timeline ───────────────────────────────────────────────────┴─► audio()
```

Each stage (``stages/``) is one asyncio task with one job; heavy work runs in threads (face tracking
in its own, crops and blending in another, the engine in the MicroBatcher's). The policy
(``policy.py``) answers every question on which live and offline sessions differ: live, the session
releases frame i and its audio at T0 + t_i + D on the audio-sample clock, and a frame not ready by
then leaves as its original picture, so D never grows; offline, nothing is dropped and bounded queues
throttle the producers. docs/architecture.md describes the graph, the timing model and the seams
for interruption.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, AsyncIterator, Optional, Protocol, Union

import numpy as np

from lipsync_rt.errors import LipSyncError

from .avatar import Avatar
from .clock import MediaClock, lookahead
from .config import SessionConfig, SessionStats
from .messages import DROPPED, FrameResult, Job, OutputAudio, OutputFrame
from .metrics import SessionMetrics
from .pcm import to_mono_float
from .policy import policy_for
from .queues import BackpressureQueue, Inbox, StreamEnd
from .stages import (AudioStage, AvatarPictures, BlendStage, CameraPictures, InferStage, LipSyncModel,
                     PictureStage, ReleaseStage, Tracker)
from .timeline import MelFramer, Timeline

if TYPE_CHECKING:
    from lipsync_rt.blend import Blender
    from lipsync_rt.engine import Engine, MicroBatcher
    from lipsync_rt.face import FaceTracker

log = logging.getLogger(__name__)

#: What a session runs on: an engine (the session wraps it in its own MicroBatcher and closes that) or
#: a MicroBatcher shared with other sessions (left open).
EngineLike = Union["Engine", "MicroBatcher"]


class Stage(Protocol):
    async def run(self) -> None: ...


class LipSyncSession:
    """A face (avatar or pushed camera frames) plus pushed speech in, lip-synced frames and audio out.

    ``engine``: see :data:`EngineLike`; its batches hold at most ``config.batch_size`` frames.
    ``avatar`` None means camera mode (``push_video``).
    """

    def __init__(self, engine: EngineLike, *, avatar: Optional[Avatar] = None,
                 config: SessionConfig = SessionConfig()) -> None:
        self.config = config
        self.avatar = avatar
        # A model whose audio window starts earlier (mel_offset < 0) needs less audio ahead of each frame.
        self.mel_offset = int(getattr(getattr(engine, "engine", engine), "mel_offset", 0))
        self.lookahead = lookahead(self.mel_offset)
        self.overhead = self.delay = float("nan")
        self.clock = MediaClock(config.fps, mel_offset=self.mel_offset)
        self.policy = policy_for(config, self.clock, self.lookahead)
        self.metrics = SessionMetrics()
        self._engine = engine

        # The ends of the graph. Input pushed before start() waits in the inboxes.
        self._audio_in, self._video_in = Inbox(), Inbox()
        self._timeline = Timeline()
        self._video_out = self.policy.droppable_queue(max(config.queue_frames, int(2 * config.fps)),
                                                      self.metrics.output_dropped)
        self._audio_out = BackpressureQueue()

        # Made by start(), released by close().
        self._batcher: Optional[MicroBatcher] = None
        self._own_batcher = False
        self._work_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._track_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._tracker: Optional[FaceTracker] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._tasks: list[asyncio.Task] = []
        self._error: Optional[BaseException] = None
        self._started = self._closed = False

    # ------------------------------------------------------------------------------------------
    # The graph

    def _graph(self, model: LipSyncModel, blender: "Blender") -> list[tuple[str, Stage]]:
        """The stages in the order a frame passes them, and the queues between them."""
        cfg, policy, size = self.config, self.policy, self.config.queue_frames
        if self.avatar is not None:
            camera, pictures = None, AvatarPictures(self.avatar, cfg.avatar_loop)
        else:
            track = Tracker(self._tracker, self._track_pool, self.metrics)
            camera = policy.camera(self._video_in, self.clock, track, policy.ordered_queue(size))
            pictures = CameraPictures(camera)
        release = ReleaseStage(policy, self.clock, self._timeline, self._video_out, self._audio_out,
                               pictures.stand_in, self.metrics)

        def job_dropped(job: Job) -> None:   # a live job pushed out by newer ones leaves unchanged
            if not isinstance(job, StreamEnd):
                release.submit(FrameResult.passed_through(job.frame, DROPPED, job.generation))

        windows = policy.ordered_queue(size)
        jobs = policy.droppable_queue(size, job_dropped)
        generated = BackpressureQueue(2)
        graph = [
            ("audio", AudioStage(self._audio_in, self._timeline, MelFramer(self.clock), windows, policy)),
            ("camera", camera),
            ("picture", PictureStage(windows, pictures, jobs, release, cfg.skip_silence)),
            ("infer", InferStage(jobs, model, policy, cfg.batch_size, generated, release, self.metrics,
                                 self._work_pool)),
            ("blend", BlendStage(generated, blender, self._work_pool, release, policy, self.metrics)),
            ("release", release),
        ]
        return [(name, stage) for name, stage in graph if stage is not None]

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
        self._audio_in.bind(self._loop)
        self._video_in.bind(self._loop)
        try:
            graph = self._graph(*await self._setup())
        except BaseException:
            await self.close()
            raise
        self.clock.start()
        for name, stage in graph:
            self._tasks.append(self._loop.create_task(self._guard(stage.run()), name=f"lipsync-{name}"))

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue speech (any rate; mono or (n, channels); int16 or float). Never blocks; callable from
        any thread once started."""
        if self._audio_in.ended:
            raise LipSyncError("push_audio after end_of_input")
        samples = to_mono_float(pcm)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise LipSyncError(f"sample_rate must be a positive integer, got {sample_rate}")
        self._audio_in.put((samples.copy() if samples is pcm else samples, int(sample_rate), time.monotonic()))

    def push_video(self, image: np.ndarray, capture_time: Optional[float] = None) -> None:
        """Camera mode: queue one BGR uint8 frame (``capture_time``: its ``time.monotonic()``)."""
        if self.avatar is not None:
            raise LipSyncError("push_video is for camera mode; this session has an avatar")
        if self._video_in.ended:
            raise LipSyncError("push_video after end_of_input")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise LipSyncError(f"video frames must be BGR uint8 HxWx3, got {image.dtype} {image.shape}")
        now = time.monotonic()
        self._video_in.put((image, now if capture_time is None else float(capture_time), now))

    def end_of_input(self) -> None:
        """No more input: what is pending is finished and released, then the iterators end."""
        self._audio_in.end()
        self._video_in.end()

    async def video(self) -> AsyncIterator[OutputFrame]:
        """The output frames in order (one consumer)."""
        while not isinstance(item := await self._video_out.get(), StreamEnd):
            yield item
        self._video_out.close()             # later calls end at once
        if self._error is not None:
            raise self._error

    async def audio(self) -> AsyncIterator[OutputAudio]:
        """The session's audio, delayed by exactly D in live mode (one consumer)."""
        while not isinstance(item := await self._audio_out.get(), StreamEnd):
            yield item
        self._audio_out.close()
        if self._error is not None:
            raise self._error

    def stats(self) -> SessionStats:
        return self.metrics.snapshot(silence_samples=self._timeline.silence_samples, delay=self.delay,
                                     lookahead=self.lookahead)

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
        self._video_out.close()
        self._audio_out.close()

    async def __aenter__(self) -> "LipSyncSession":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    # ------------------------------------------------------------------------------------------
    # Setup and plumbing

    async def _setup(self) -> tuple[LipSyncModel, "Blender"]:
        """The engine behind its batcher, the blender, the threads, the face tracker (camera mode), and
        D = L + the policy's processing budget."""
        from lipsync_rt.blend import Blender
        from lipsync_rt.engine import MicroBatcher, split_engine

        cfg = self.config
        try:
            blender = Blender(cfg.blend, cache_size=max(16, len(self.avatar) if self.avatar else 16))
        except ValueError as e:
            raise LipSyncError(str(e)) from None
        if isinstance(self._engine, MicroBatcher):
            self._batcher = self._engine
        else:
            self._batcher = MicroBatcher(self._engine, max_batch=cfg.batch_size, max_wait_ms=cfg.max_wait_ms)
            self._own_batcher = True
        # Avatar features stand in for the face encoder only with an engine that can skip it.
        encoded = (self.avatar is not None and cfg.encoder_cache and self.avatar.features is not None
                   and split_engine(self._batcher) is not None)
        model = LipSyncModel(self._batcher, self.avatar, encoded)
        self._work_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-work")
        if self.avatar is None:
            from lipsync_rt.face import FaceTracker

            self._track_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-track")
            self._tracker = await self._loop.run_in_executor(
                self._track_pool, lambda: FaceTracker(keyframe_interval=cfg.keyframe_interval, pads=cfg.pads))
        self.overhead = await self.policy.processing_budget(model.probe)
        self.delay = self.clock.delay = self.lookahead + self.overhead
        return model, blender

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
