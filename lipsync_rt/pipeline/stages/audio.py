"""Audio and mel: pushed PCM -> the 16 kHz timeline -> one mel window per video frame.

Pushed speech of any rate and shape is resampled to 16 kHz mono and written to the session's
:class:`~lipsync_rt.pipeline.timeline.Timeline` (from which the release stage plays it out), and the
same samples go through :class:`~lipsync_rt.pipeline.timeline.MelFramer`, which emits frame i's window
as soon as its last column is final. Windows lying wholly in filled-in silence are marked idle.

A live session's clock does not wait for speech, but silence is never cut into speech that keeps
time. Whether audio is missing is judged on the producer's own pace (:class:`Pace`): a producer that
pushed a chunk of duration c at time a is expected again at a + c (a sound card, a TTS streaming in
real time, WebRTC's 20 ms frames), and only when that has passed by more than ``audio_grace_ms`` is
it overdue; then the timeline is filled with silence up to what the clock says is due (less the grace),
checked every ``policy.tick`` seconds. Speech that comes after such a pause is placed as captured just
before it arrived (``policy.resume_point``), so it has the whole grace ahead of it again, as a stream
that started at T0 does; speech that comes late without a pause having been seen is contiguous (see
:class:`Tick`). Samples the resampler still holds back count as arrived (and are let out before any
silence goes in). A producer slower than real time is never overdue by its own pace; the release
clock then forces silence in just before it would have to play samples that are not there
(``policy.fill_point``). ``end_of_segment`` says the producer is done: from then on the timeline is
filled as soon as the grace has passed.

Segments: each push names its segment (or none); the stage tells the ledger where the segment's
samples land, and closes a segment (its resampler flushed, so its last samples are written) at its
``end_of_segment`` or when audio of another segment comes. Interrupts: every push carries the
generation it was made in; a push made before an ``interrupt()`` is dropped, also half-way through
writing it, and :meth:`AudioStage.cut` (called by the session's interrupt) moves the timeline and the
framer to the cut.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Optional

import numpy as np

from ..clock import sleep_until
from ..messages import Generation, MelWindow
from ..pcm import Resampler
from ..queues import Inbox, Queue, StreamEnd
from ..timeline import MelFramer, Timeline

if TYPE_CHECKING:
    from ..policy import Policy
    from ..segments import Segments

_PIECE = 1600       # samples per StreamingMel push (100 ms): keeps each loop step short
#: The longest chunk a paced producer is expected to take between pushes: a push of a whole reply at
#: once is a burst ahead of real time, not a pace (the timeline is far ahead then anyway).
PACE_MAX_S = 0.1
#: Filled-in silence shorter than this between two pushes is a cut into speech, not a pause (a click,
#: and latency added for the rest of the session): what ``silence_cuts`` counts.
CUT_MAX_SAMPLES = 1600


@dataclass(frozen=True)
class Tick:
    """The live clock's prompt to check for overdue audio, stamped with the time it was due to be sent.

    Pushes queued after it arrived after that, so it never judges audio missing that was already in
    hand; and when the event loop stalls (a busy machine), the tick that comes late judges as of
    before the stall, so a producer on the same loop, stalled with it, is not taken for late.
    """

    at: float


class Pace:
    """When a producer is overdue: ``grace`` seconds after it should have pushed again.

    After a push of ``duration`` seconds arriving at ``a``, the next is expected at ``a + duration``
    (at most ``PACE_MAX_S`` later): a producer that keeps real time in chunks of any size up to that is
    never overdue while its pushes jitter by less than the grace. Before the first push, and once the
    producer said it is done (``end_of_segment``) or was cut off (an interrupt), it is overdue at once.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.expected: Optional[float] = None

    def pushed(self, arrival: float, duration: float) -> None:
        self.expected = arrival + min(duration, PACE_MAX_S)

    def finished(self) -> None:
        self.expected = None

    def overdue(self, now: float) -> bool:
        """Whether missing audio may be filled in now."""
        return self.expected is None or now > self.expected + self.grace


@dataclass(frozen=True, eq=False)
class AudioPush:
    """Speech as pushed: float32 mono ``samples`` at ``rate``, ``arrival`` its ``time.monotonic()``;
    ``source``: the same samples with their channels, kept when the session gives back its input audio."""

    samples: np.ndarray
    rate: int
    arrival: float
    segment: Optional[Hashable]
    generation: int
    source: Optional[np.ndarray] = None


@dataclass(frozen=True)
class SegmentEnd:
    """``end_of_segment(segment)`` as it reaches the stage, in order with the pushes."""

    segment: Hashable
    generation: int


class AudioStage:
    """``inbox``: AudioPush and SegmentEnd items, then END; out: MelWindow, then StreamEnd(frames)."""

    def __init__(self, inbox: Inbox, timeline: Timeline, framer: MelFramer, windows: Queue, policy: "Policy",
                 generation: Generation, segments: "Segments") -> None:
        self._inbox = inbox
        self._timeline = timeline
        self._framer = framer
        self._windows = windows
        self._policy = policy
        self._generation = generation
        self._segments = segments
        self._resampler: Optional[Resampler] = None
        self._segment: Optional[Hashable] = None      # the segment being written (timeline side)
        self._pace = Pace(policy.config.audio_grace_ms / 1000)
        self._paused = True                           # the timeline ends in filled-in silence (or is empty)
        self._gap: Optional[int] = None               # filled-in samples since the last pushed ones
        self.samples_dropped = 0                      # pushed before an interrupt, never written
        self.silence_cuts = 0                         # short silences filled in between two pushes

    async def run(self) -> None:
        ticker = asyncio.ensure_future(self._tick()) if self._policy.tick else None
        try:
            await self._consume()
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)

    def cut(self, position: int, now: float) -> None:
        """An interrupt: drop the timeline from ``position`` (the release position) on, and start the mel
        stream again where new speech would be written (live: what the clock says is due, so the next
        reply gets the whole delay D to be lip-synced; offline: at ``position``). The gap is silence.
        Synchronous, on the event loop, so nothing is written in between."""
        due = self._policy.samples_due(now)
        start = self._framer.restart(max(position, due if due is not None else position))
        self._timeline.cut(position)
        if start > position:
            self._timeline.append(np.zeros(start - position, np.float32), silence=True)
        self._resampler, self._segment = None, None
        self._pace.finished()
        self._paused = True
        self._gap = None                              # what follows a barge-in is a new start, not a cut

    async def _tick(self) -> None:
        due = time.monotonic()
        while not self._inbox.ended:
            due += self._policy.tick
            await sleep_until(due)
            self._inbox.put(Tick(due))
            due = max(due, time.monotonic())      # after a stall, the next tick a whole period later

    async def _consume(self) -> None:
        while True:
            item = await self._inbox.get()
            if isinstance(item, Tick):
                if not self._inbox.ended:
                    await self._fill_silence(item.at, self._generation.current)
            elif isinstance(item, StreamEnd):
                await self._finish()
                return
            elif isinstance(item, SegmentEnd):
                if not self._generation.stale(item.generation) and item.segment == self._segment:
                    await self._close_segment(time.monotonic(), item.generation)
                    self._pace.finished()
            elif self._generation.stale(item.generation):
                self.samples_dropped += item.samples.size
            else:
                await self._push(item)

    async def _push(self, item: AudioPush) -> None:
        live = lambda: not self._generation.stale(item.generation)   # noqa: E731 - re-checked after each await
        if item.segment != self._segment:
            await self._close_segment(item.arrival, item.generation)
            if not live():
                return
            self._segment = item.segment
        if self._resampler is not None and self._resampler.rate != item.rate:
            await self._write(self._resampler.flush(), item.arrival, item.generation, self._segment)
            self._resampler = None
        if not live():
            return
        source = self._timeline.source
        if self._resampler is None:
            self._resampler = Resampler(item.rate)
            if source is not None:
                source.start_run()
        if source is not None and item.source is not None:
            source.append(item.source, item.rate)
        held = self._resampler.held                  # earlier audio that comes out ahead of this push
        samples = self._resampler(item.samples)
        if self._paused:
            # after a pause (silence was filled in: the producer had stopped), this speech starts as
            # captured just before it arrived. Without one it is contiguous with what came before, even
            # if it comes late: a stall of this process held the ticks back with the producer, and
            # silence here would shift the rest of the speech later; late frames are concealed instead.
            start = self._policy.resume_point(item.arrival, self._resampler.out_samples(item.samples.size))
            if start is not None and start - held > self._timeline.end:
                await self._write(np.zeros(start - held - self._timeline.end, np.float32), item.arrival,
                                  item.generation, silence=True)
        await self._write(samples, item.arrival, item.generation, self._segment)
        self._pace.pushed(item.arrival, item.samples.size / item.rate)

    async def _close_segment(self, now: float, generation: int) -> None:
        """What was pushed so far is complete: the resampler's tail is written, and the open segment
        (if any) is closed in the ledger. A new segment starts with a fresh resampler."""
        segment, resampler = self._segment, self._resampler
        self._resampler = None
        if resampler is not None:
            await self._write(resampler.flush(), now, generation, segment)
        if segment is not None and not self._generation.stale(generation):
            self._segments.close(segment, self._timeline.end)
            self._segment = None

    async def _finish(self) -> None:
        now, generation = time.monotonic(), self._generation.current
        await self._close_segment(now, generation)
        await self._emit(self._framer.flush(), now, generation)
        self._timeline.close()
        await self._windows.end(StreamEnd(frames=self._framer.next_index))

    async def _fill_silence(self, now: float, generation: int) -> None:
        """Write silence up to where the timeline must reach at ``now`` (``policy.fill_point``): what the
        clock says is due once the producer is overdue, else only what the release clock needs."""
        target = self._policy.fill_point(now, self._pace.overdue(now))
        if target is None:
            return
        held = self._resampler.held if self._resampler is not None else 0
        if target - self._timeline.end - held <= 0:
            return
        if held:
            # the resampler's tail is the end of the speech before this pause: it goes first
            resampler, self._resampler = self._resampler, None
            await self._write(resampler.flush(), now, generation, self._segment)
        gap = target - self._timeline.end
        if gap > 0:
            await self._write(np.zeros(gap, np.float32), now, generation, silence=True)

    async def _write(self, samples: np.ndarray, arrival: float, generation: int,
                     segment: Optional[Hashable] = None, silence: bool = False) -> None:
        for a in range(0, samples.size, _PIECE):
            if self._generation.stale(generation):      # interrupted while this was being written
                self.samples_dropped += samples.size - a
                return
            piece = samples[a:a + _PIECE]
            start = self._timeline.append(piece, silence)
            if piece.size:
                self._paused = silence
                self._count_cut(piece.size, silence)
            if segment is not None:
                self._segments.wrote(segment, start, start + piece.size)
            if not silence and self._timeline.source is not None:
                self._timeline.source.wrote(start, start + piece.size)
            await self._emit(self._framer.push(piece.astype(np.float32, copy=False)), arrival, generation)
            if samples.size > _PIECE:
                await asyncio.sleep(0)

    def _count_cut(self, samples: int, silence: bool) -> None:
        """Follow the stretches of filled-in silence; one shorter than ``CUT_MAX_SAMPLES`` between two
        pushed stretches is a cut."""
        if silence:
            if self._gap is not None:
                self._gap += samples
        else:
            if self._gap is not None and 0 < self._gap < CUT_MAX_SAMPLES:
                self.silence_cuts += 1
            self._gap = 0

    async def _emit(self, windows: list[tuple[int, np.ndarray]], arrival: float, generation: int) -> None:
        stamp = self._policy.stamp(arrival)
        # decided now, not after the awaits below: a cut may change the timeline meanwhile
        idle = [self._timeline.is_silence(*self._framer.window_samples(index)) for index, _ in windows]
        for (index, window), quiet in zip(windows, idle):
            await self._windows.put(MelWindow(index, window, stamp, quiet, generation))
