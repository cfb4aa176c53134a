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


async def _detach(track: MediaStreamTrack, source_attr: str) -> None:
    """Stop ``track`` and let go of its source iterator and callback, closing the iterator when nobody
    is inside it. aiortc may keep a closed peer's sender (and so this track) until its own connect task
    ends, which can take long: the track must not keep the session alive meanwhile."""
    track.stop()
    source, track._on_frame = getattr(track, source_attr), None
    setattr(track, source_attr, None)
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:        # being iterated right now by a recv() that is ending: it finishes itself
            pass


class SessionVideoTrack(MediaStreamTrack):
    """The session's output video as an aiortc track (``bgr24`` frames, pts on the 90 kHz RTP clock)."""

    kind = "video"

    def __init__(self, frames: AsyncIterator[OutputFrame], clock: MediaClock,
                 on_frame: Optional[Callable[[OutputFrame], None]] = None) -> None:
        super().__init__()
        self._frames = frames
        self._clock = clock
        self._on_frame = on_frame

    async def detach(self) -> None:
        """Stop, and let go of the session's frames (see ``_detach``)."""
        await _detach(self, "_frames")

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live" or self._frames is None:
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
    """float32 in [-1, 1], mono ``(n,)`` or ``(n, channels)`` -> an ``s16`` *stereo* frame.

    s16 mono or stereo is all aiortc's Opus encoder takes, and it sends stereo: a mono frame would be
    upmixed by FFmpeg at -3 dB per channel, so the far end heard speech 3 dB quieter than it was (6 dB
    after a mono round trip). Mono is sent as two equal channels at its own level; more channels than
    two are averaged first.
    """
    x = np.asarray(samples, np.float32)
    if x.ndim == 2 and x.shape[1] != 2:
        x = x.mean(axis=1)
    if x.ndim == 1:
        x = np.repeat(x[:, None], 2, axis=1)
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class SessionAudioTrack(MediaStreamTrack):
    """The session's (delayed) output audio, re-cut into 20 ms stereo frames, pts in samples.

    Chunks may have any length; a gap in their pts is filled with silence so the RTP clock stays
    true, and an overlap or a jump backwards restarts the buffer at the new pts. A chunk that carries
    the pushed audio as it came (``OutputAudio.source``, a session with ``source_audio``) is sent as
    that, at its own rate (a 48 kHz microphone keeps its top octave); else its 16 kHz samples.
    """

    kind = "audio"
    MAX_GAP_S = 1.0

    def __init__(self, chunks: AsyncIterator[OutputAudio], clock: MediaClock,
                 on_frame: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self._chunks = chunks
        self._on_frame = on_frame
        self._clock = clock
        self._buffer = np.zeros((0, 2), np.float32)
        self._pts: Optional[int] = None  # pts of the first sample in the buffer, at _rate
        self._rate = SAMPLE_RATE
        self._ended = False

    async def detach(self) -> None:
        """Stop, and let go of the session's audio (see ``_detach``)."""
        await _detach(self, "_chunks")

    def _append(self, samples: np.ndarray, pts: int, rate: int) -> None:
        samples = np.asarray(samples, np.float32)
        if samples.ndim == 2 and samples.shape[1] != 2:
            samples = samples.mean(axis=1)
        if samples.ndim == 1:
            samples = np.repeat(samples[:, None], 2, axis=1)
        if self._pts is None or rate != self._rate:
            self._buffer, self._pts, self._rate = samples, pts, rate
            return
        end = self._pts + len(self._buffer)
        gap = pts - end
        if gap == 0:
            self._buffer = np.concatenate([self._buffer, samples])
        elif 0 < gap <= self.MAX_GAP_S * rate:
            self._buffer = np.concatenate([self._buffer, np.zeros((gap, 2), np.float32), samples])
        else:  # overlap or a jump: start again at the chunk's own time
            self._buffer, self._pts = samples, pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live" or self._chunks is None:
            raise MediaStreamError
        need = lambda: int(round(self._rate * AUDIO_PTIME))  # noqa: E731 - the rate is known after a chunk
        while not self._ended and (self._pts is None or len(self._buffer) < need()):
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            if chunk.source is not None and chunk.source_rate:
                pts = round(Fraction(chunk.pts * chunk.source_rate, chunk.sample_rate))   # as source_audio rounds
                self._append(chunk.source, pts, chunk.source_rate)
            else:
                self._append(chunk.samples, chunk.pts, chunk.sample_rate)
        n = need()
        if len(self._buffer) == 0 or self._pts is None:
            self.stop()
            raise MediaStreamError
        samples = self._buffer[:n]
        if len(samples) < n:  # the last, partial frame of the stream
            samples = np.concatenate([samples, np.zeros((n - len(samples), 2), np.float32)])
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
