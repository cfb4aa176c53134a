"""Camera mode: pushed camera frames -> one tracked picture per output frame, in frame order.

Which pushed frame becomes output frame i is the policy's choice:

- :class:`LiveCamera`: the newest frame that had arrived at T0 + t_i (frames in between are never
  tracked). A tracker that fell more than a frame behind skips tracking; those pictures pass through.
- :class:`OfflineCamera`: the i-th pushed frame, every one tracked.

:class:`CameraPictures` is what the picture stage reads: picture i, in order; after an offline video
ends, its last picture repeats (a video shorter than the speech holds its last frame).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from ..clock import MediaClock, sleep_until
from ..messages import SourceFrame
from ..metrics import SessionMetrics
from ..queues import END, Inbox, Queue, StreamEnd

if TYPE_CHECKING:
    from lipsync_rt.face import FaceTracker


class Tracker:
    """A FaceTracker run in its own thread (MediaPipe graphs are not thread-safe), timed as "track"."""

    def __init__(self, tracker: "FaceTracker", pool: concurrent.futures.Executor, metrics: SessionMetrics) -> None:
        self._tracker, self._pool, self._metrics = tracker, pool, metrics

    async def __call__(self, index: int, image: np.ndarray, capture: Optional[float]) -> SourceFrame:
        started = time.perf_counter()
        track = await asyncio.get_running_loop().run_in_executor(self._pool, self._tracker.update, image)
        self._metrics.record("track", started)
        return SourceFrame(index, image, track, capture)


class LiveCamera:
    """Samples the pushed frames on the session's clock. ``pictures``: SourceFrame or None (no frame yet)."""

    def __init__(self, inbox: Inbox, clock: MediaClock, track: Tracker, pictures: Queue) -> None:
        self.pictures = pictures
        self._inbox, self._clock, self._track = inbox, clock, track
        self._recent: deque = deque(maxlen=max(8, int(2 * float(clock.rate))))   # (image, capture, arrival)
        self._frames: Optional[int] = None

    def stop_at(self, frames: int) -> None:
        """The stream has ``frames`` frames: take no picture from that index on."""
        self._frames = frames

    async def run(self) -> None:
        period = float(self._clock.time_base)
        i = 0
        while True:
            deadline = self._clock.capture_deadline(i)
            await sleep_until(deadline)
            if self._frames is not None and i >= self._frames:
                return
            self._take_arrived()
            picture = next(((image, capture) for image, capture, arrival in reversed(self._recent)
                            if arrival <= deadline), None)
            if picture is None:
                frame = None
            elif time.monotonic() - deadline > period:
                frame = SourceFrame(i, picture[0], None, picture[1], dropped=True)
            else:
                frame = await self._track(i, *picture)
            await self.pictures.put(frame)
            i += 1

    def _take_arrived(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                return
            if not isinstance(item, StreamEnd):   # a live camera ends with the speech, not its own input
                self._recent.append(item)


class OfflineCamera:
    """Tracks every pushed frame in order; ``pictures``: SourceFrame, then END."""

    def __init__(self, inbox: Inbox, track: Tracker, pictures: Queue) -> None:
        self.pictures = pictures
        self._inbox, self._track = inbox, track
        self._frames: Optional[int] = None

    def stop_at(self, frames: int) -> None:
        """The stream has ``frames`` frames: a video longer than the speech is not tracked further."""
        self._frames = frames

    async def run(self) -> None:
        i = 0
        while not isinstance(item := await self._inbox.get(), StreamEnd):
            if self._frames is not None and i >= self._frames:
                return
            image, capture, _arrival = item
            await self.pictures.put(await self._track(i, image, capture))
            i += 1
        await self.pictures.put(END)


Camera = Union[LiveCamera, OfflineCamera]


class CameraPictures:
    """Picture i of a camera, read in frame order by the picture stage.

    The camera makes exactly one picture per frame index, in order; indices the picture stage skips
    (windows of an interrupted speech) have their pictures read and kept aside, so picture i is always
    camera picture i, and the last few are kept for :meth:`stand_in`.
    """

    _RECENT = 64

    def __init__(self, camera: Camera) -> None:
        self._camera = camera
        self._last: Optional[SourceFrame] = None
        self._ended = False
        self._next = 0                                      # index of the camera's next picture
        self._recent: dict[int, SourceFrame] = {}

    async def picture(self, index: int, idle: bool = False) -> Optional[SourceFrame]:
        frame = None
        while self._next <= index:
            frame = await self._read(self._next)
            self._next += 1
        return frame

    async def _read(self, index: int) -> Optional[SourceFrame]:
        if not self._ended:
            frame = await self._camera.pictures.get()
            if not isinstance(frame, StreamEnd):
                if frame is not None:
                    self._last = frame
                    self._recent[index] = frame
                    self._recent.pop(index - self._RECENT, None)
                return frame
            self._ended = True
        last = self._last
        return None if last is None else SourceFrame(index, last.image, last.track, last.capture_time)

    def stand_in(self, index: int) -> Optional[SourceFrame]:
        """A picture already read for ``index`` passes through unchanged; otherwise nothing to show (the
        slot is skipped)."""
        frame = self._recent.get(index)
        return None if frame is None else SourceFrame(index, frame.image, None, frame.capture_time)

    def interrupt(self, index: int) -> None:
        """Camera pictures are their own idle pictures: nothing changes."""

    def finish(self, frames: int) -> None:
        self._camera.stop_at(frames)
