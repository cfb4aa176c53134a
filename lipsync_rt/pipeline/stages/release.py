"""Release: frames and audio leave the session here, in order, on the session's one clock.

Every frame the graph has settled but not yet released waits in this stage, keyed by its index: a
finished frame, a picture passed through, or the stand-in a job left behind (``PENDING``). Together
with the timeline's unreleased audio ``[released, end)`` this is everything a session holds that has
not gone out, which is what a barge-in discards: :meth:`ReleaseStage.submit` lets through only the
current generation, and :meth:`ReleaseStage.cut` replaces whatever waits with idle pictures. What has
left is never taken back: ``next_index`` and ``audio_position`` only move forwards.

Audio leaves in chunks that never span two speech segments; each chunk says which segment it
belongs to and carries the segment events it caused (``segments.py``).

When each slot leaves is the policy's (its pacer): live, frame i at T0 + t_i + D and audio sample s
at T0 + s/16000 + D, with whatever is there at that moment (a stand-in leaves as a drop); offline,
as soon as frame i is settled, and each audio piece as soon as it is written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Callable, Optional

from lipsync_rt.audio import SAMPLE_RATE

from ..clock import MediaClock
from ..conceal import Concealer
from ..messages import DROPPED, IDLE, FrameResult, Generation, OutputAudio, OutputFrame, SourceFrame
from ..metrics import SessionMetrics
from ..queues import Queue
from ..segments import Segments
from ..timeline import Timeline

if TYPE_CHECKING:
    from ..policy import Policy

#: how much of the coming audio must be quiet for the output to count as in a pause (``quiet_from``)
QUIET_AHEAD = 0.2


class ReleaseStage:
    """``submit`` settles a frame; ``run`` releases video into ``video_out`` and audio into ``audio_out``.

    ``stand_in(i)`` is what frame i shows when nothing for it has reached this stage by its release
    time (the avatar picture; None in camera mode: the slot is skipped).
    """

    def __init__(self, policy: "Policy", clock: MediaClock, timeline: Timeline, video_out: Queue,
                 audio_out: Queue, stand_in: Callable[[int], Optional[SourceFrame]], metrics: SessionMetrics,
                 generation: Optional[Generation] = None, segments: Optional[Segments] = None) -> None:
        self.generation = generation or Generation()
        self.segments = segments or Segments(lambda event: None)
        self.next_index = 0                 # frames before this one have left
        self.audio_position = 0             # audio before this sample has left
        self.frames: Optional[int] = None   # how many frames the stream has, once its audio ended
        self._end_at: Optional[int] = None  # an interrupt after the end of input ends the stream there
        self._policy, self._clock, self._timeline = policy, clock, timeline
        self._video_out, self._audio_out = video_out, audio_out
        self._stand_in = stand_in
        self._metrics = metrics
        self._concealer = Concealer() if policy.live and policy.config.conceal_drops else None
        self._waiting: dict[int, FrameResult] = {}
        self._changed = asyncio.Event()

    # -- what the other stages call

    def submit(self, result: FrameResult) -> None:
        """Settle frame ``result.index`` (replacing its stand-in); too late or stale results are ignored."""
        if result.index < self.next_index or self.generation.stale(result.generation):
            return
        self._waiting[result.index] = result
        self._changed.set()

    def finish(self, frames: int) -> None:
        """The stream has ``frames`` frames; release ends after the last one."""
        self.frames = frames if self._end_at is None else min(frames, self._end_at)
        self._changed.set()

    def cut(self, until: int, ended: bool = False) -> None:
        """An interrupt: drop every frame waiting here; frames from ``next_index`` to ``until`` (those
        whose windows the interrupted speech already made) show their idle stand-in. Frames from
        ``until`` on come from the new generation. ``ended``: no input was coming any more (after
        ``end_of_input``), so the stream ends here instead."""
        self._waiting.clear()
        if ended:
            self._end_at = until = self.next_index
            self.finish(self.frames if self.frames is not None else until)
        for index in range(self.next_index, until):
            frame = self._stand_in(index)
            if frame is not None:
                self._waiting[index] = FrameResult.passed_through(frame, IDLE, self.generation.current)
        self._changed.set()

    def drop(self) -> None:
        """Let go of every frame waiting here (the session is closed)."""
        self._waiting.clear()
        self._changed.set()

    def quiet_from(self, index: int) -> bool:
        """Whether the output is in a pause from frame ``index`` on: the audio from where it starts (or
        from what is about to leave, if earlier) through the next ``QUIET_AHEAD`` s is quiet, as far as it
        has come. Where the live clock may be moved back unnoticed (``playout.py``)."""
        start = min(self.audio_position, round(self._clock.frame_time(index) * SAMPLE_RATE))
        return self._timeline.quiet(start, start + round(QUIET_AHEAD * SAMPLE_RATE))

    def held(self, index: int) -> Optional[FrameResult]:
        """What frame ``index`` would show if it left now, as settled so far (None: nothing yet)."""
        return self._waiting.get(index)

    async def settled(self, index: int) -> None:
        """Until frame ``index`` is final (not a stand-in), or lies past the end of the stream."""
        while not self._ended_before(index):
            result = self._waiting.get(index)
            if result is not None and result.final:
                return
            self._changed.clear()
            await self._changed.wait()

    # -- the stage

    async def run(self) -> None:
        await asyncio.gather(self._release_video(), self._release_audio())

    async def _release_video(self) -> None:
        i = 0
        while True:
            await self._policy.video_slot(i, self)
            if self._ended_before(i):
                break
            result = self._take(i)
            if result is not None and result.image is not None:
                await self._emit(result)
            i += 1
        await self._video_out.end()

    def _take(self, index: int) -> Optional[FrameResult]:
        self.next_index = index + 1
        result = self._waiting.pop(index, None)
        if result is None:
            frame = self._stand_in(index)
            result = None if frame is None else FrameResult.passed_through(frame, DROPPED, self.generation.current)
        elif not result.final:
            result = dataclasses.replace(result, reason=DROPPED)
        if result is not None and self._concealer is not None:
            result = self._concealer.conceal(result)
            self._concealer.released(result)
        return result

    async def _emit(self, result: FrameResult) -> None:
        self._metrics.released(result, time.monotonic())
        frame = OutputFrame(result.image, result.index, self._clock.time_base, result.generated, result.capture_time,
                            result.reason == IDLE, result.held)
        await self._video_out.put(frame)    # live: never waits (drops the oldest); offline: backpressure

    def _ended_before(self, index: int) -> bool:
        return self.frames is not None and index >= self.frames

    async def _release_audio(self) -> None:
        while (stop := await self._policy.audio_slot(self.audio_position, self._timeline)) > self.audio_position:
            pos = self.audio_position
            segment, before, boundary = self.segments.segment_at(pos)
            stop = min(stop, boundary)
            self.segments.released(stop)
            source = self._timeline.source
            original = source.read(pos, stop) if source is not None else None
            self._audio_out.put_nowait(OutputAudio(self._timeline.read(pos, stop), pos, SAMPLE_RATE, segment,
                                                   before, self.segments.take_inband(), original,
                                                   (source.rate or SAMPLE_RATE) if source is not None else None))
            self._metrics.audio_samples_out += stop - pos
            self.audio_position = stop
            self._timeline.discard_before(stop)
        await self._audio_out.end()
