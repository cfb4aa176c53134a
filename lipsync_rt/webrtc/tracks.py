"""Media between aiortc and a lip-sync session: outgoing tracks fed by the session, incoming readers.

aiortc's sender pulls: it awaits ``track.recv()`` in a loop and sends whatever it gets at once, so the
tracks here release each frame at its time on a media clock. A live session already releases outputs
on time; one :class:`~lipsync_rt.pipeline.clock.MediaClock` per peer, anchored by the first item sent,
keeps its audio and video on one wall clock anyway, so an offline session or a burst after a stall is
never sent faster than real time. RTP constants (90 kHz video clock, 20 ms audio frames) are aiortc's.

Incoming video is read so that a slow consumer never builds latency: aiortc decodes into an unbounded
queue, so one task drains it and keeps only the newest frame. Incoming audio is never dropped: it is
the master clock of the session.
"""

from __future__ import annotations

import asyncio
import functools
import time
from fractions import Fraction
from typing import AsyncIterator, Callable, Optional

import av
import numpy as np
from aiortc.mediastreams import AUDIO_PTIME, VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from ..audio import SAMPLE_RATE
from ..pipeline.clock import MediaClock
from ..pipeline.messages import OutputAudio, OutputFrame

__all__ = ["MediaClock", "SessionAudioTrack", "SessionVideoTrack", "audio_frame", "read_audio",
           "read_video_newest"]


class SessionVideoTrack(MediaStreamTrack):
    """The session's output video as an aiortc track (``bgr24`` frames, pts on the 90 kHz RTP clock)."""

    kind = "video"

    def __init__(self, frames: AsyncIterator[OutputFrame], clock: MediaClock,
                 on_frame: Optional[Callable[[OutputFrame], None]] = None) -> None:
        super().__init__()
        self._frames = frames
        self._clock = clock
        self._on_frame = on_frame

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            item = await self._frames.__anext__()
        except StopAsyncIteration:
            self.stop()
            raise MediaStreamError from None
        seconds = item.pts * item.time_base
        await self._clock.wait_until(float(seconds))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(item.image), format="bgr24")
        frame.pts = int(round(seconds / VIDEO_TIME_BASE))
        frame.time_base = VIDEO_TIME_BASE
        if self._on_frame is not None:
            self._on_frame(item)
        return frame


def audio_frame(samples: np.ndarray, pts: int, sample_rate: int) -> av.AudioFrame:
    """float32 mono in [-1, 1] -> an ``s16`` mono frame, the only sample format aiortc's Opus encoder takes."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class SessionAudioTrack(MediaStreamTrack):
    """The session's (delayed) output audio, re-cut into 20 ms frames, pts in samples.

    Chunks may have any length; a gap in their pts is filled with silence so the RTP clock stays
    true, and an overlap or a jump backwards restarts the buffer at the new pts.
    """

    kind = "audio"
    MAX_GAP_S = 1.0

    def __init__(self, chunks: AsyncIterator[OutputAudio], clock: MediaClock,
                 on_frame: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self._chunks = chunks
        self._on_frame = on_frame
        self._clock = clock
        self._buffer = np.zeros(0, np.float32)
        self._pts: Optional[int] = None  # pts of the first sample in the buffer
        self._rate = SAMPLE_RATE
        self._ended = False

    def _append(self, samples: np.ndarray, pts: int, rate: int) -> None:
        samples = np.asarray(samples, np.float32).reshape(-1)
        if self._pts is None or rate != self._rate:
            self._buffer, self._pts, self._rate = samples, pts, rate
            return
        end = self._pts + len(self._buffer)
        gap = pts - end
        if gap == 0:
            self._buffer = np.concatenate([self._buffer, samples])
        elif 0 < gap <= self.MAX_GAP_S * rate:
            self._buffer = np.concatenate([self._buffer, np.zeros(gap, np.float32), samples])
        else:  # overlap or a jump: start again at the chunk's own time
            self._buffer, self._pts = samples, pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        need = lambda: int(round(self._rate * AUDIO_PTIME))  # noqa: E731 - the rate is known after a chunk
        while not self._ended and (self._pts is None or len(self._buffer) < need()):
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            self._append(chunk.samples, chunk.pts, chunk.sample_rate)
        n = need()
        if len(self._buffer) == 0 or self._pts is None:
            self.stop()
            raise MediaStreamError
        samples = self._buffer[:n]
        if len(samples) < n:  # the last, partial frame of the stream
            samples = np.concatenate([samples, np.zeros(n - len(samples), np.float32)])
        pts = self._pts
        self._buffer, self._pts = self._buffer[n:], self._pts + n
        await self._clock.wait_until(pts / self._rate)
        if self._on_frame is not None:
            self._on_frame()
        return audio_frame(samples, pts, self._rate)


async def read_audio(track: MediaStreamTrack, push: Callable[[np.ndarray, int], None]) -> None:
    """Feed every incoming audio frame, as 16 kHz mono s16, to ``push(pcm, rate)`` until the track ends."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            push(out.to_ndarray().reshape(-1), SAMPLE_RATE)


async def read_video_newest(
    track: MediaStreamTrack,
    push: Callable[[np.ndarray, float], None],
    on_drop: Optional[Callable[[int], None]] = None,
) -> None:
    """Feed the newest incoming video frame to ``push(bgr, capture_time)``; frames overtaken are dropped.

    One task drains aiortc's queue as fast as frames come (cheap: no conversion), the other converts
    (in a worker thread) and pushes whatever is newest when it is ready, so a slow consumer costs
    frames, never latency.
    """
    slot: list = [None]  # (frame, arrival) not yet pushed
    ready = asyncio.Event()
    ended = False
    superseded = 0

    async def drain() -> None:
        nonlocal superseded, ended
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                ended = True
                ready.set()
                return
            if slot[0] is not None:
                superseded += 1
            slot[0] = (frame, time.monotonic())
            ready.set()

    loop = asyncio.get_running_loop()
    drainer = asyncio.ensure_future(drain())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if superseded and on_drop is not None:
                on_drop(superseded)
            superseded = 0
            if slot[0] is not None:
                (frame, arrived), slot[0] = slot[0], None
                # YUV -> BGR costs about a millisecond per VGA frame: off the event loop.
                image = await loop.run_in_executor(None, functools.partial(frame.to_ndarray, format="bgr24"))
                push(image, arrived)
            if ended:
                return
    finally:
        drainer.cancel()
        await asyncio.gather(drainer, return_exceptions=True)
