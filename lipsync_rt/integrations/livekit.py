"""A lip-synced avatar for LiveKit Agents: a ``VideoGenerator`` for ``livekit.agents.voice.avatar``.

``AvatarRunner`` reads the agent's TTS audio (``DataStreamAudioReceiver``: the agent streams it with
``DataStreamAudioOutput``), hands it to the generator, and publishes what the generator yields into
the room through its A/V synchronizer. :class:`LipSyncVideoGenerator` is that generator over one
:class:`~lipsync_rt.pipeline.LipSyncSession`:

- ``push_audio(rtc.AudioFrame)`` is ``session.push_audio`` into the current reply (a segment; the
  first frame after a segment end opens the next); ``push_audio(AudioSegmentEnd())`` ends it.
- ``clear_buffer()`` is ``session.interrupt()``: the next yielded picture is idle and the reply's
  audio stops. The runner itself then tells the agent ``playback_finished(interrupted=True)``, so no
  ``AudioSegmentEnd`` is yielded for a cut reply.
- Iterating yields, in media order and in real time, an ``rtc.VideoFrame`` (RGBA) for every frame at
  the avatar's rate, idle too, the reply's audio as ``rtc.AudioFrame`` (the agent's own samples at
  ``audio_sample_rate``, delayed by the session's D, only while a reply plays), and
  ``AudioSegmentEnd`` right after a reply's last audio, which is when the runner reports
  ``playback_finished``.

``options()`` gives the ``AvatarOptions`` the runner needs (size, rate, audio format) from the avatar.
"""

from __future__ import annotations

import itertools
import logging
from typing import AsyncIterator, Optional, Union

import cv2

try:
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator
except ImportError as error:           # pragma: no cover - depends on what is installed
    raise ImportError(f"lipsync_rt.integrations.livekit needs livekit-agents: pip install 'lipsync-rt[livekit]' "
                      f"({error})") from error

from lipsync_rt.errors import LipSyncError
from lipsync_rt.pipeline import Avatar, LipSyncSession, OutputAudio, OutputFrame, PlaybackFinished, SessionConfig

from .shared import SegmentAudio, pcm_from_bytes, shared_engine

log = logging.getLogger(__name__)

Output = Union[rtc.VideoFrame, rtc.AudioFrame, AudioSegmentEnd]


class LipSyncVideoGenerator(VideoGenerator):
    """``avatar`` speaking the audio pushed into it, for ``AvatarRunner``.

    ``engine``: an Engine or MicroBatcher (default: the process's shared one). ``audio_sample_rate``:
    the rate of the audio yielded, which is the runner's ``AvatarOptions.audio_sample_rate`` (audio
    pushed at another rate is resampled). Use as ``async with`` or call :meth:`start` and
    :meth:`aclose`; pushing or iterating starts it too.
    """

    def __init__(self, avatar: Avatar, *, engine=None, config: Optional[SessionConfig] = None,
                 audio_sample_rate: int = 24000) -> None:
        if config is not None and not config.live:
            raise LipSyncError("a LiveKit avatar runs live: SessionConfig(live=True)")
        if int(audio_sample_rate) != audio_sample_rate or audio_sample_rate <= 0:
            raise LipSyncError(f"audio_sample_rate must be a positive integer, got {audio_sample_rate!r}")
        self.avatar = avatar
        self.audio_sample_rate = int(audio_sample_rate)
        self._engine = engine
        self._config = config or SessionConfig()
        self.session: Optional[LipSyncSession] = None
        self._audio = SegmentAudio(self.audio_sample_rate)
        self._segment: Optional[str] = None
        self._unfinished: set[str] = set()        # replies pushed and not yet finished playing
        self._cut: set[str] = set()               # replies cut by clear_buffer, still draining out
        self._ids = itertools.count(1)
        self._closed = False

    def options(self) -> AvatarOptions:
        """What ``AvatarRunner`` needs to publish this avatar: its size, frame rate and audio format."""
        height, width = self.avatar.frames[0].shape[:2]
        return AvatarOptions(video_width=width, video_height=height, video_fps=self._config.fps,
                             audio_sample_rate=self.audio_sample_rate, audio_channels=1)

    async def start(self) -> None:
        if self._closed:
            raise LipSyncError("this generator is closed")
        if self.session is None:
            engine = self._engine if self._engine is not None else shared_engine()
            self.session = LipSyncSession(engine, avatar=self.avatar, config=self._config)
            await self.session.start()

    async def aclose(self) -> None:
        """End the session at once; iteration ends."""
        self._closed = True
        if self.session is not None:
            await self.session.close()

    async def __aenter__(self) -> "LipSyncVideoGenerator":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- VideoGenerator

    async def push_audio(self, frame: Union[rtc.AudioFrame, AudioSegmentEnd]) -> None:
        """A frame of the current reply, or its end. After ``aclose`` this raises LipSyncError."""
        if self._closed:
            raise LipSyncError("push_audio after aclose: this generator is closed")
        await self.start()
        if isinstance(frame, AudioSegmentEnd):
            if self._segment is not None:             # after clear_buffer the cut reply's end is a no-op
                self._audio.end(self._segment)
                self.session.end_of_segment(self._segment)
                self._segment = None
            return
        if not isinstance(frame, rtc.AudioFrame):
            raise LipSyncError(f"push_audio takes rtc.AudioFrame or AudioSegmentEnd, got {type(frame).__name__}")
        pcm = pcm_from_bytes(bytes(frame.data.cast("B")), frame.sample_rate, frame.num_channels)
        if self._segment is None:
            self._segment = f"segment-{next(self._ids)}"
            self._unfinished.add(self._segment)
        if self.session.push_audio(pcm, frame.sample_rate, segment=self._segment):
            self._audio.push(self._segment, pcm, frame.sample_rate)

    def clear_buffer(self) -> None:
        """Barge-in: drop everything not yet yielded; the next picture is idle.

        Audio of the cut replies that the session had released but this generator not yet yielded is
        dropped too: the runner has already counted the reply as finished, and would take it for a
        new one."""
        if self.session is not None:
            self.session.interrupt()
        self._cut |= self._unfinished
        self._segment = None

    def __aiter__(self) -> AsyncIterator[Output]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Output]:
        await self.start()
        async for item in self.session.media():
            if isinstance(item, OutputFrame):
                yield self._video(item)
                continue
            audio = self._chunk(item)
            if audio is not None:
                yield audio
            for event in item.events:
                if isinstance(event, PlaybackFinished):
                    self._audio.forget(event.segment)
                    self._unfinished.discard(event.segment)
                    self._cut.discard(event.segment)
                    if not event.interrupted:
                        yield AudioSegmentEnd()

    @staticmethod
    def _video(frame: OutputFrame) -> rtc.VideoFrame:
        height, width = frame.image.shape[:2]
        rgba = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGBA)
        return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())

    def _chunk(self, chunk: OutputAudio) -> Optional[rtc.AudioFrame]:
        if chunk.segment in self._cut:
            return None
        original = self._audio.take(chunk)
        if original is None or original[0].size == 0:
            return None
        pcm, rate = original
        return rtc.AudioFrame(pcm.tobytes(), rate, 1, pcm.size)
