"""Sinks: what consumes a session's frames and audio. The session already paces its output, so a
sink only writes; :func:`run_sinks` runs every write in one worker thread (encoders are not
thread-safe, and encoding must not block the event loop) in the order the items came."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence

from lipsync_rt.errors import MediaError
from lipsync_rt.pipeline import OutputAudio, OutputFrame

if TYPE_CHECKING:
    from lipsync_rt.audio import DecodedAudio
    from lipsync_rt.pipeline import LipSyncSession


class Sink(Protocol):
    def write_video(self, frame: OutputFrame) -> None: ...

    def write_audio(self, chunk: OutputAudio) -> None: ...

    def close(self) -> None: ...


class Mp4Sink:
    """An mp4 (H.264 + AAC; or mov, mkv by the extension) written atomically; :meth:`close` finalises
    it, also after Ctrl-C.

    Video keeps the session's pts (a dropped slot or a camera that started late leaves a gap the
    player fills by holding the previous frame); audio is contiguous from sample 0, like the pts.

    The audio track is what went in, not the model's 16 kHz mono: at ``audio_rate`` with
    ``audio_channels`` (``audio_layout`` names their order), fed from each chunk's ``source`` (a session
    with ``source_audio=True``) or, offline, from ``file_audio``, the decoded input file, stretch by
    stretch at the chunks' media times. A chunk with neither is written from its 16 kHz samples,
    converted to the track's format.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = 25, *, audio: bool = True,
                 audio_rate: int = 16000, audio_channels: int = 1, audio_layout: Optional[str] = None,
                 file_audio: Optional["DecodedAudio"] = None, width: Optional[int] = None,
                 height: Optional[int] = None) -> None:
        from lipsync_rt.media import Mp4Writer

        if file_audio is not None:
            if file_audio.source is None:
                raise ValueError("file_audio must be decoded with keep_source=True")
            audio_rate, audio_channels, audio_layout = file_audio.rate, file_audio.channels, file_audio.layout
        self.path = path
        self._writer = Mp4Writer(path, fps, audio=audio, audio_rate=audio_rate, audio_channels=audio_channels,
                                 audio_layout=audio_layout, width=width, height=height)
        self._audio = audio
        self._file = file_audio
        self._file_written = 0          # file samples written so far
        self.frames = 0

    def write_video(self, frame: OutputFrame) -> None:
        self._writer.write_video(frame.image, pts=frame.pts)
        self.frames += 1

    def write_audio(self, chunk: OutputAudio) -> None:
        if not self._audio:
            return
        if self._file is not None:
            stop = round(Fraction((chunk.pts + chunk.samples.size) * self._file.rate, chunk.sample_rate))
            self._write_file(stop)
        elif chunk.source is not None:
            self._writer.write_audio(chunk.source, rate=chunk.source_rate)
        else:
            self._writer.write_audio(chunk.samples, rate=chunk.sample_rate)

    def _write_file(self, stop: int) -> None:
        """The input file's samples up to ``stop`` (at the file's rate), contiguous with what went before."""
        samples = self._file.source[self._file_written:stop]
        if len(samples):
            self._writer.write_audio(samples, rate=self._file.rate)
            self._file_written += len(samples)

    def close(self) -> None:
        """Finish the file; with no frame written there is nothing to keep (no file is left)."""
        if self.frames == 0:
            self._writer.abort()
            return
        if self._audio and self._file is not None and self._file_written:
            self._write_file(len(self._file.source))     # the file's last samples, past the 16 kHz count
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


class CallbackSink:
    """Hands every frame (and audio chunk) to user callbacks, called in the sink worker thread."""

    def __init__(self, on_frame: Optional[Callable[[OutputFrame], None]] = None,
                 on_audio: Optional[Callable[[OutputAudio], None]] = None) -> None:
        self.on_frame, self.on_audio = on_frame, on_audio

    def write_video(self, frame: OutputFrame) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)

    def write_audio(self, chunk: OutputAudio) -> None:
        if self.on_audio is not None:
            self.on_audio(chunk)

    def close(self) -> None:
        pass


async def run_sinks(session: "LipSyncSession", sinks: Sequence[Sink], *,
                    on_frame: Optional[Callable[[OutputFrame], None]] = None, close: bool = True) -> None:
    """Feed ``session.video()`` and ``session.audio()`` to ``sinks`` until both end, then close them.

    ``on_frame`` runs on the event loop for each frame (status lines, counters). A sink that raises
    ends the run with that error; the sinks are closed either way (an mp4 is finalised, not lost).
    ``close`` False leaves closing (or aborting) the sinks to the caller, who may still reject the
    result (``infer`` does when an engine batch failed).
    """
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lipsync-sink")

    def each(method: str, item) -> None:
        for sink in sinks:
            getattr(sink, method)(item)

    async def pump(stream, method: str) -> None:
        async for item in stream:
            if on_frame is not None and method == "write_video":
                on_frame(item)
            await loop.run_in_executor(pool, each, method, item)

    try:
        await asyncio.gather(pump(session.video(), "write_video"), pump(session.audio(), "write_audio"))
    finally:
        errors = []
        for sink in sinks if close else ():
            try:
                await loop.run_in_executor(pool, sink.close)
            except MediaError as e:
                errors.append(e)
        pool.shutdown(wait=True)
        if errors:
            raise errors[0]
