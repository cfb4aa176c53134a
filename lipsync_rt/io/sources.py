"""A media file as a source: its audio (and, for camera mode, its video) pushed into a session at
the pace it would have been captured, or as fast as the session takes it offline.

Real-time playback is how tests, benchmarks and the demo's ``--audio`` dry run drive the live graph
through exactly the code paths a microphone and a webcam use. Audio goes in ``chunk_ms`` pieces,
each pushed when its last sample would have been recorded (as a sound card delivers it): at 16 kHz
mono, or with ``source_audio`` as the file has it (its rate and channels, which the session
resamples for the model and can give back as it came).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Optional

from lipsync_rt.audio import SAMPLE_RATE, decode_audio
from lipsync_rt.errors import MediaError
from lipsync_rt.pipeline.clock import sleep_until

if TYPE_CHECKING:
    from lipsync_rt.pipeline import LipSyncSession


class FileSource:
    """Plays ``path`` into a session: ``await source.run(session)``; ends with ``end_of_input()``.

    ``video``: also push the file's frames (camera mode); by default when the session has no avatar.
    ``loop``: start over at the end until ``seconds`` have played (``seconds`` None: play once).
    ``segment``: push the audio as this speech segment (a reply), ended with ``end_of_segment``.
    ``source_audio``: push the file's own samples (rate, channels) instead of 16 kHz mono; ``decoded``
    says what they are.
    """

    def __init__(self, path: str | os.PathLike, *, realtime: bool = True, chunk_ms: float = 10.0,
                 video: Optional[bool] = None, seconds: Optional[float] = None, loop: bool = False,
                 segment: Optional[Hashable] = None, source_audio: bool = False) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.video = video
        self.seconds = seconds
        self.loop = loop
        self.segment = segment
        self.decoded = decode_audio(self.path, keep_source=source_audio)
        self.audio = self.decoded.mono16k
        self.rate = self.decoded.rate if source_audio else SAMPLE_RATE
        self._pcm = self.decoded.source if source_audio else self.audio
        self.chunk = max(1, int(round(chunk_ms * self.rate / 1000)))
        self.frames_pushed = 0
        self.samples_pushed = 0         # at ``rate``
        self.started: Optional[float] = None

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def _audio_stream(self):
        pcm = self._pcm
        total = len(pcm) if self.seconds is None else int(self.seconds * self.rate)
        if not self.loop:
            total = min(total, len(pcm))
        pos = 0
        while pos < total:
            piece = pcm[pos % len(pcm):][: min(self.chunk, total - pos)]
            yield pos, piece
            pos += len(piece)

    async def run(self, session: "LipSyncSession", end_input: bool = True) -> None:
        """Push everything, then ``end_of_input`` (also when this task is cancelled or fails; with
        ``end_input`` False the session goes on: an avatar idles)."""
        with_video = self.video if self.video is not None else session.avatar is None
        try:
            tasks = [self._push_audio(session)]
            if with_video:
                tasks.append(self._push_video(session))
            self.started = time.monotonic()
            await asyncio.gather(*tasks)
            if self.segment is not None:
                session.end_of_segment(self.segment)
        finally:
            if end_input:
                session.end_of_input()

    async def _push_audio(self, session: "LipSyncSession") -> None:
        for pos, piece in self._audio_stream():
            if self.realtime:
                await sleep_until(self.started + (pos + len(piece)) / self.rate)
            else:
                await asyncio.sleep(0)
            if self.segment is None:
                session.push_audio(piece, self.rate)
            else:
                session.push_audio(piece, self.rate, segment=self.segment)
            self.samples_pushed += len(piece)

    async def _push_video(self, session: "LipSyncSession") -> None:
        from lipsync_rt.media import iter_video_frames

        loop = asyncio.get_running_loop()
        limit = self.seconds if self.seconds is not None else self.duration
        offset = 0.0
        while True:
            frames = iter_video_frames(self.path)
            last_time = offset
            count = 0
            while True:
                frame = await loop.run_in_executor(None, next, frames, None)
                if frame is None:
                    break
                t = offset + float(frame.pts * frame.time_base)
                if t >= limit:
                    frames.close()
                    return
                if self.realtime:
                    await sleep_until(self.started + t)
                session.push_video(frame.image, capture_time=time.monotonic())
                self.frames_pushed += 1
                last_time, count = t, count + 1
            if count == 0:
                raise MediaError(f"{self.path}: no video frames")
            if not self.loop:
                return
            offset = last_time + (last_time - offset) / max(count - 1, 1)
