"""Audio and mel: pushed PCM -> the 16 kHz timeline -> one mel window per video frame.

Pushed speech of any rate and shape is resampled to 16 kHz mono and written to the session's
:class:`~lipsync_rt.pipeline.timeline.Timeline` (from which the release stage plays it out), and the
same samples go through :class:`~lipsync_rt.pipeline.timeline.MelFramer`, which emits frame i's window
as soon as its last column is final. A live session's clock does not wait for speech: audio that has
not come ``audio_grace_ms`` after it was due is written as silence (the policy says how much is due,
checked every ``policy.tick`` seconds and at every push), and speech that comes later is appended
after it. Windows lying wholly in such silence are marked idle.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..messages import MelWindow
from ..pcm import Resampler
from ..queues import Inbox, Queue, StreamEnd
from ..timeline import MelFramer, Timeline

if TYPE_CHECKING:
    from ..policy import Policy

TICK = object()     # the live clock's prompt to check for audio that is overdue
_PIECE = 1600       # samples per StreamingMel push (100 ms): keeps each loop step short


class AudioStage:
    """``inbox`` items: ``(samples float32, rate, arrival)`` then END; out: MelWindow, then StreamEnd(frames).

    ``generation`` stamps every window: the number of the speech it belongs to (see ``messages``).
    """

    def __init__(self, inbox: Inbox, timeline: Timeline, framer: MelFramer, windows: Queue, policy: "Policy") -> None:
        self.generation = 0
        self._inbox = inbox
        self._timeline = timeline
        self._framer = framer
        self._windows = windows
        self._policy = policy

    async def run(self) -> None:
        ticker = asyncio.ensure_future(self._tick()) if self._policy.tick else None
        try:
            await self._consume()
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)

    async def _tick(self) -> None:
        while not self._inbox.ended:
            await asyncio.sleep(self._policy.tick)
            self._inbox.put(TICK)

    async def _consume(self) -> None:
        resampler: Optional[Resampler] = None
        while True:
            item = await self._inbox.get()
            if item is TICK:
                if not self._inbox.ended:
                    await self._fill_silence(time.monotonic())
                continue
            if isinstance(item, StreamEnd):
                now = time.monotonic()
                if resampler is not None:
                    await self._write(resampler.flush(), now)
                await self._emit(self._framer.flush(), now)
                self._timeline.close()
                await self._windows.end(StreamEnd(frames=self._framer.next_index))
                return
            samples, rate, arrival = item
            if resampler is None or resampler.rate != rate:
                if resampler is not None:
                    await self._write(resampler.flush(), arrival)
                resampler = Resampler(rate)
            samples = resampler(samples)
            # Audio that comes after a gap is taken as captured just before it arrived.
            await self._fill_silence(arrival, coming=samples.size)
            await self._write(samples, arrival)

    async def _fill_silence(self, now: float, coming: int = 0) -> None:
        """Write silence up to what the clock says is due at ``now``, less ``coming`` samples in hand."""
        due = self._policy.samples_due(now)
        if due is not None:
            gap = due - coming - self._timeline.end
            if gap > 0:
                await self._write(np.zeros(gap, np.float32), now, silence=True)

    async def _write(self, samples: np.ndarray, arrival: float, silence: bool = False) -> None:
        for a in range(0, max(samples.size, 1), _PIECE):
            piece = samples[a:a + _PIECE]
            if piece.size == 0:
                return
            self._timeline.append(piece, silence)
            await self._emit(self._framer.push(piece.astype(np.float32, copy=False)), arrival)
            if samples.size > _PIECE:
                await asyncio.sleep(0)

    async def _emit(self, windows: list[tuple[int, np.ndarray]], arrival: float) -> None:
        stamp = self._policy.stamp(arrival)
        for index, window in windows:
            idle = self._timeline.is_silence(*self._framer.window_samples(index))
            await self._windows.put(MelWindow(index, window, stamp, idle, self.generation))
