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
then leaves as its original picture, so a backlog never delays later frames; offline, nothing is
dropped and bounded queues throttle the producers.

A voice agent speaks in segments (``push_audio(..., segment=ID)``, ``end_of_segment``), hears
``PlaybackStarted``/``PlaybackFinished`` back (``events()``, ``on_event``, or in-band on the audio
chunks), and barges in with ``interrupt()``: everything not yet released is dropped and the next
released frame is idle. docs/architecture.md describes the graph, the timing model and interruption.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable, Optional, Protocol, Union

import numpy as np

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.errors import LipSyncError

from .avatar import Avatar
from .clock import MediaClock, lookahead
from .config import SessionConfig, SessionStats
from .messages import DROPPED, FrameResult, Generation, Job, OutputAudio, OutputFrame
from .metrics import SessionMetrics
from .pcm import to_float, to_mono_float
from .policy import policy_for
from .queues import BackpressureQueue, DropOldestQueue, Inbox, StreamEnd
from .rest import speech_weight
from .segments import SegmentEvent, SegmentId, Segments
from .source_audio import SourceAudio
from .stages import (AudioStage, AvatarPictures, BlendStage, CameraPictures, InferStage, LipSyncModel,
                     PictureStage, ReleaseStage, Tracker)
from .stages.audio import AudioPush, SegmentEnd
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
    ``avatar`` None means camera mode (``push_video``). ``on_event``: called on the event loop with
    each :data:`~lipsync_rt.pipeline.segments.SegmentEvent` as it happens (an exception it raises is
    logged, not raised).
    """

    #: segment events kept for ``events()`` when nobody reads them (the oldest go first)
    EVENTS_KEPT = 1024

    def __init__(self, engine: EngineLike, *, avatar: Optional[Avatar] = None,
                 config: SessionConfig = SessionConfig(),
                 on_event: Optional[Callable[[SegmentEvent], None]] = None) -> None:
        self.config = config
        self.avatar = avatar
        # A model whose audio window starts earlier (mel_offset < 0) needs less audio ahead of each frame.
        self.mel_offset = int(getattr(getattr(engine, "engine", engine), "mel_offset", 0))
        self.lookahead = lookahead(self.mel_offset)
        self.overhead = float("nan")     # the processing budget D - L set at start (measured or given)
        self.clock = MediaClock(config.fps, mel_offset=self.mel_offset)
        self.policy = policy_for(config, self.clock, self.lookahead)
        self.metrics = SessionMetrics()
        self._engine = engine

        # Session control: the generation every in-flight message carries, and the speech segments.
        self._generation = Generation()
        self._on_event = on_event
        self._events = DropOldestQueue(self.EVENTS_KEPT)
        self._segments = Segments(self._event)
        self._stages: dict[str, Stage] = {}

        # The ends of the graph. Input pushed before start() waits in the inboxes.
        self._audio_in, self._video_in = Inbox(), Inbox()
        self._timeline = Timeline(SourceAudio() if config.source_audio else None)
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
            camera, pictures = None, AvatarPictures(self.avatar, cfg.avatar_loop, cfg.idle_transition)
        else:
            track = Tracker(self._tracker, self._track_pool, self.metrics)
            camera = policy.camera(self._video_in, self.clock, track, policy.ordered_queue(size))
            pictures = CameraPictures(camera)
        generation = self._generation
        release = ReleaseStage(policy, self.clock, self._timeline, self._video_out, self._audio_out,
                               pictures.stand_in, self.metrics, generation, self._segments)

        def job_dropped(job: Job) -> None:   # a live job pushed out by newer ones leaves unchanged
            if not isinstance(job, StreamEnd):
                release.submit(FrameResult.passed_through(job.frame, DROPPED, job.generation))

        windows = policy.ordered_queue(size)
        jobs = policy.droppable_queue(size, job_dropped)
        generated = BackpressureQueue(2)
        self._framer = MelFramer(self.clock)
        self._pictures = pictures
        graph = [
            ("audio", AudioStage(self._audio_in, self._timeline, self._framer, windows, policy, generation,
                                 self._segments)),
            ("camera", camera),
            ("picture", PictureStage(windows, pictures, jobs, release, cfg.skip_silence, generation, policy,
                                     self.metrics)),
            ("infer", InferStage(jobs, model, policy, cfg.batch_size, generated, release, self.metrics,
                                 self._work_pool, generation)),
            ("blend", BlendStage(generated, blender, self._work_pool, release, policy, self.metrics, generation,
                                 self._rest())),
            ("release", release),
        ]
        self._stages = {name: stage for name, stage in graph if stage is not None}
        return list(self._stages.items())

    def _rest(self) -> Optional[Callable[[np.ndarray], float]]:
        """The paste strength per mel window (``rest.py``), or None: the full paste on every frame."""
        if not (self.config.rest_in_pauses and self.config.blend == "feather"):
            return None
        offset, fps = self.mel_offset, self.config.fps
        return lambda window: speech_weight(window, offset, fps)

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
            run = self._release_then_end(stage) if name == "release" else stage.run()
            self._tasks.append(self._loop.create_task(self._guard(run), name=f"lipsync-{name}"))

    def push_audio(self, pcm: np.ndarray, sample_rate: int, segment: Optional[SegmentId] = None) -> bool:
        """Queue speech (any rate; mono or (n, channels); int16 or float). Never blocks; callable from
        any thread once started.

        ``segment``: the reply this audio belongs to (any hashable id; see ``end_of_segment``). A new id
        ends the segment that was open; audio without one belongs to no segment (and also ends the open
        one). Audio for a segment that has ended raises; audio for one cut by ``interrupt()`` is dropped
        (a TTS may still be sending the reply it was told to stop): then this returns False.
        """
        self._check_open()
        if self._audio_in.ended:
            raise LipSyncError("push_audio after end_of_input")
        samples = to_mono_float(pcm)
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise LipSyncError(f"sample_rate must be a positive integer, got {sample_rate}")
        generation = self._generation.current
        if not self._segments.accept(segment):
            return False
        source = to_float(pcm) if self.config.source_audio else None
        self._audio_in.put(AudioPush(samples.copy() if samples is pcm else samples, int(sample_rate),
                                     time.monotonic(), segment, generation, source))
        return True

    def end_of_segment(self, segment: Optional[SegmentId] = None) -> None:
        """The reply ``segment`` (None: the open one) has no more audio: ``PlaybackFinished`` follows when
        its last sample is released. Ending a segment that is already over (ended, or cut by an
        interrupt) does nothing, nor does ending with none open; an id never pushed raises."""
        self._check_open()
        ended = self._segments.end(segment)
        if ended is not None:
            self._audio_in.put(SegmentEnd(ended, self._generation.current))

    def interrupt(self) -> None:
        """Barge-in: drop every speech sample, mel window, job and generated frame not yet released.

        From the call, the next released frame shows the idle picture and the released audio is
        silence; nothing already released is taken back, and audio pushed after the call is kept.
        Every segment not finished gets ``PlaybackFinished(interrupted=True)`` with the seconds of it
        that were released. With nothing playing it changes nothing visible. On the event loop the cut
        is immediate; from another thread, audio pushed before the call is dropped at once and the cut
        happens at the loop's next turn.
        """
        if self._closed:
            return
        self._generation.advance()
        self.metrics.interrupts += 1
        loop = self._loop
        if loop is None or not self._tasks:
            self._cut()                                   # not started: nothing was released
        elif _on_loop(loop):
            self._cut()
        else:
            loop.call_soon_threadsafe(self._cut)

    async def media(self) -> AsyncIterator[Union[OutputFrame, OutputAudio]]:
        """Video frames and audio chunks in one stream, in media-time order (a frame before the audio at
        its time): for a transport fed by one producer, which plays frame i with the audio that starts
        at t_i. Both leave on one clock, so neither waits for the other for long. Use instead of
        ``video()`` and ``audio()``, not with them."""
        queues: list[asyncio.Queue] = [asyncio.Queue(), asyncio.Queue()]

        async def read(iterator: AsyncIterator, queue: asyncio.Queue) -> None:
            try:
                async for item in iterator:
                    queue.put_nowait(item)
            finally:
                queue.put_nowait(None)

        readers = [asyncio.ensure_future(read(it, q)) for it, q in zip((self.video(), self.audio()), queues)]
        try:
            frame, chunk = await queues[0].get(), await queues[1].get()
            while frame is not None or chunk is not None:
                if chunk is None or (frame is not None and frame.time * SAMPLE_RATE <= chunk.pts):
                    yield frame
                    frame = await queues[0].get()
                else:
                    yield chunk
                    chunk = await queues[1].get()
            for reader in readers:
                reader.result()                          # a stage's error reaches the consumer
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def events(self) -> AsyncIterator[SegmentEvent]:
        """The segment events as they happen, until the session ends (one consumer; if nobody reads,
        the oldest of ``EVENTS_KEPT`` go first)."""
        while not isinstance(item := await self._events.get(), StreamEnd):
            yield item
        self._events.close()

    def push_video(self, image: np.ndarray, capture_time: Optional[float] = None) -> None:
        """Camera mode: queue one BGR uint8 frame (``capture_time``: its ``time.monotonic()``)."""
        self._check_open()
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

    @property
    def delay(self) -> float:
        """D now: L + the processing budget (NaN before start); live, it may grow with the load
        (``playout.py``)."""
        return float("nan") if math.isnan(self.overhead) else self.clock.delay

    def stats(self) -> SessionStats:
        audio = self._stages.get("audio")
        if audio is not None:
            self.metrics.silence_cuts = audio.silence_cuts
        playout = self.policy.playout
        return self.metrics.snapshot(silence_samples=self._timeline.silence_samples, delay=self.delay,
                                     lookahead=self.lookahead,
                                     delay_increases=playout.increases if playout is not None else 0)

    @property
    def playing(self) -> Optional[SegmentId]:
        """The segment whose audio is being released now (None: silence or audio without a segment)."""
        release = self._stages.get("release")
        return self._segments.segment_at(release.audio_position)[0] if release is not None else None

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
        self._video_out.close(drain=True)
        self._audio_out.close(drain=True)
        self._events.close()
        self._let_go()

    def _let_go(self) -> None:
        """A closed session drops everything big it held: queued and unreleased audio, frames waiting to
        leave, the stages with their queues and the blender's masks. Whoever still holds the session
        (a WebRTC transport that finishes its own teardown later, an unfinished ``video()`` iterator)
        then holds a small object, not megabytes of media."""
        audio = self._stages.get("audio")
        if audio is not None:
            self.metrics.silence_cuts = audio.silence_cuts
        self._audio_in.clear()
        self._video_in.clear()
        self._timeline.clear()
        for stage in self._stages.values():
            if isinstance(stage, ReleaseStage):
                stage.drop()
        self._stages, self._tasks = {}, []
        self._pictures = self._framer = None
        self._tracker = None
        if self._own_batcher:
            self._batcher = None

    async def __aenter__(self) -> "LipSyncSession":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    # ------------------------------------------------------------------------------------------
    # Session control

    def _cut(self) -> None:
        """The interrupt, in one place (on the event loop). The generation has already advanced, so
        everything in flight is stale wherever it is; this moves the two places that hold unreleased
        output to the release position: the timeline (audio from there on is gone, the mel stream
        starts again) and the release stage (waiting frames become idle pictures up to the first frame
        of the new mel stream)."""
        if self._closed:
            return
        release, audio = self._stages.get("release"), self._stages.get("audio")
        if release is None or audio is None:    # not started: only the pushes in the inbox were dropped
            self._segments.cut(0)
            return
        ended = self._timeline.closed
        audio.cut(release.audio_position, time.monotonic())
        self._pictures.interrupt(release.next_index)
        release.cut(self._framer.next_index, ended=ended)
        self._segments.cut(release.audio_position)

    def _event(self, event: SegmentEvent) -> None:
        self._events.put_nowait(event)
        if self._on_event is not None:
            # at the loop's next turn, not from inside the stage that raised it: a listener may call
            # interrupt() or push audio
            if self._loop is not None and not self._closed:
                self._loop.call_soon(self._notify, event)
            else:
                self._notify(event)

    def _notify(self, event: SegmentEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - a listener's mistake must not stop the session
            log.exception("on_event listener failed on %r", event)

    def _check_open(self) -> None:
        if self._closed:
            raise LipSyncError("this session is closed; start a new one")

    # ------------------------------------------------------------------------------------------
    # Setup and plumbing

    async def _setup(self) -> tuple[LipSyncModel, "Blender"]:
        """The engine behind its batcher, the blender, the threads, the face tracker (camera mode), and
        D = L + the policy's processing budget."""
        from lipsync_rt.blend import Blender
        from lipsync_rt.engine import MicroBatcher, split_engine

        cfg = self.config
        try:
            blender = Blender(cfg.blend, detail=cfg.detail, cache_size=max(16, len(self.avatar) if self.avatar else 16))
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
        self.clock.delay = self.lookahead + self.overhead
        return model, blender

    async def _release_then_end(self, release: ReleaseStage) -> None:
        """The release stage's run; when the last frame and sample have left, ``events()`` ends too."""
        await release.run()
        self._events.close()

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


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
