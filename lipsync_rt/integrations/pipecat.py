"""A lip-synced avatar for Pipecat: TTS audio in, the avatar's video and the same audio, delayed, out.

Put :class:`LipSyncAvatarService` right after the TTS service::

    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         LipSyncAvatarService(avatar=avatar), transport.output(), assistant_aggregator])

It takes what the TTS sends and hands the transport what it should play:

- ``TTSAudioRawFrame`` (any rate, any channel count; ``context_id`` names the reply) goes into one
  lip-sync session as a speech segment; ``TTSStartedFrame`` passes on; ``TTSStoppedFrame`` ends the
  segment and is held back until the reply has finished playing, so the transport's bot-stopped-speaking
  comes when the voice stops, not when the TTS did.
- The session's output comes back at the avatar's frame rate all the time, idle too:
  ``OutputImageRawFrame`` (RGB, the avatar's size) with ``sync_with_audio`` set, each followed by the
  ``TTSAudioRawFrame`` that plays with it (the TTS's own audio, at its own rate, delayed by the
  session's D), so the transport shows each picture when the audio before it has been played.
- ``InterruptionFrame`` is ``session.interrupt()``: the next picture is idle and the held-back audio is
  gone. (Pipecat 1.x sends it when the user starts speaking and interruptions are on; with
  ``interrupt_on_user_speech`` a ``UserStartedSpeakingFrame`` interrupts too.)
- Frames with a presentation time (word timestamps) pass on with it moved by D, to stay with the
  delayed voice; everything else passes on untouched.
- A frame this processor cannot use (audio that is not whole int16 samples, a rate of 0) is reported
  upstream as a non-fatal ``ErrorFrame`` and dropped; the session goes on.

All pipelines of a process share one engine (``shared_engine()``), unless given their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Optional

import cv2

try:
    from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame, OutputImageRawFrame,
                                       StartFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame,
                                       UserStartedSpeakingFrame)
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
except ImportError as error:           # pragma: no cover - depends on what is installed
    raise ImportError(f"lipsync_rt.integrations.pipecat needs pipecat-ai 1.x: pip install 'lipsync-rt[pipecat]' "
                      f"({error})") from error

from lipsync_rt.errors import LipSyncError
from lipsync_rt.pipeline import (Avatar, LipSyncSession, OutputAudio, OutputFrame, PlaybackFinished,
                                 SessionConfig)

from .shared import SegmentAudio, pcm_from_bytes, shared_engine

try:                                   # the name of Pipecat releases before InterruptionFrame
    from pipecat.frames.frames import StartInterruptionFrame
except ImportError:                    # pragma: no cover - depends on the installed Pipecat
    StartInterruptionFrame = InterruptionFrame

log = logging.getLogger(__name__)
_NS = 1_000_000_000


class LipSyncAvatarService(FrameProcessor):
    """A Pipecat frame processor that lip-syncs ``avatar`` to the TTS audio passing through it.

    ``engine``: an Engine or MicroBatcher (default: the process's shared one, the bundled model on the
    best engine this machine has). ``config``: the session's settings (live; its ``fps`` is the video
    rate, which the transport's ``video_out_framerate`` should match).
    """

    def __init__(self, *, avatar: Avatar, engine=None, config: Optional[SessionConfig] = None,
                 interrupt_on_user_speech: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if config is not None and not config.live:
            raise LipSyncError("a Pipecat avatar runs live: SessionConfig(live=True)")
        self.avatar = avatar
        self._engine = engine
        self._config = config or SessionConfig()
        self._interrupt_on_user_speech = interrupt_on_user_speech
        self.session: Optional[LipSyncSession] = None
        self._audio = SegmentAudio()
        self._context: Optional[str] = None             # the reply being spoken (TTSStartedFrame's id)
        self._with_audio: set[str] = set()              # replies that pushed audio, not yet finished
        self._cut: set[str] = set()                     # replies interrupted, still draining out
        self._held: dict[str, TTSStoppedFrame] = {}     # TTSStoppedFrame until the reply has played
        self._output: Optional[asyncio.Task] = None
        self._ids = itertools.count()

    # -- lifetime

    async def setup(self, setup: FrameProcessorSetup) -> None:
        """Make the session (engine warm-up and the delay D are measured here, off the frame path)."""
        await super().setup(setup)
        engine = self._engine if self._engine is not None else shared_engine()
        self.session = LipSyncSession(engine, avatar=self.avatar, config=self._config)
        await self.session.start()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def _close(self) -> None:
        if self._output is not None:
            await self.cancel_task(self._output)
            self._output = None
        if self.session is not None:
            await self.session.close()

    @property
    def delay(self) -> float:
        """D: how long after the TTS audio the avatar plays it (seconds)."""
        return self.session.delay if self.session is not None else float("nan")

    # -- frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._output is None and self.session is not None:
                self._output = self.create_task(self._play(), name="lipsync-avatar-output")
        elif isinstance(frame, TTSAudioRawFrame):
            await self._push_audio(frame)
        elif isinstance(frame, TTSStartedFrame):
            self._context = frame.context_id or f"reply-{next(self._ids)}"
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            await self._stopped(frame)
        elif isinstance(frame, (InterruptionFrame, StartInterruptionFrame)) or (
                self._interrupt_on_user_speech and isinstance(frame, UserStartedSpeakingFrame)):
            self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._close()
            await self.push_frame(frame, direction)
        else:
            if frame.pts and self.session is not None:     # word timestamps: with the delayed voice
                frame.pts += int(self.session.delay * _NS)
            await self.push_frame(frame, direction)

    async def _push_audio(self, frame: TTSAudioRawFrame) -> None:
        segment = frame.context_id or self._context or f"reply-{next(self._ids)}"
        self._context = segment
        try:
            pcm = pcm_from_bytes(frame.audio, frame.sample_rate, frame.num_channels)
            taken = self.session.push_audio(pcm, frame.sample_rate, segment=segment)
        except LipSyncError as error:
            await self.push_error(f"{self}: dropped a TTSAudioRawFrame: {error}")
            return
        if taken:                                       # not a reply already interrupted
            self._audio.push(segment, pcm, frame.sample_rate)
            self._with_audio.add(segment)

    async def _stopped(self, frame: TTSStoppedFrame) -> None:
        segment = frame.context_id or self._context
        self._context = None
        if segment in self._cut:                            # the reply was interrupted: nothing to stop
            return
        if segment is None or segment not in self._with_audio:
            await self.push_frame(frame)                    # a reply with no audio: nothing to wait for
            return
        self._held[segment] = frame
        self._audio.end(segment)
        self.session.end_of_segment(segment)

    def _interrupt(self) -> None:
        if self.session is not None:
            self.session.interrupt()
        # What the interrupted replies held back is not played, so their stops are not either: the
        # transport stops the bot on the InterruptionFrame itself. Audio of theirs the session released
        # before the cut but this processor has not pushed yet is dropped: downstream, everything after
        # the InterruptionFrame is new.
        self._held.clear()
        self._cut |= self._with_audio
        self._context = None

    async def _finish(self) -> None:
        """EndFrame: what has been pushed plays out, then the stream ends."""
        if self.session is None:
            return
        self.session.end_of_input()
        if self._output is not None:
            await self._output
            self._output = None
        await self.session.close()

    # -- frames out

    async def _play(self) -> None:
        """The session's pictures and audio, in media order, as Pipecat frames."""
        async for item in self.session.media():
            if isinstance(item, OutputFrame):
                await self.push_frame(self._image(item))
            else:
                await self._play_audio(item)

    @staticmethod
    def _image(frame: OutputFrame) -> OutputImageRawFrame:
        height, width = frame.image.shape[:2]
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
        image = OutputImageRawFrame(image=rgb.tobytes(), size=(width, height), format="RGB")
        if hasattr(image, "sync_with_audio"):              # shown once the audio before it has played
            image.sync_with_audio = True
        return image

    async def _play_audio(self, chunk: OutputAudio) -> None:
        original = self._audio.take(chunk) if chunk.segment not in self._cut else None
        if original is not None:
            pcm, rate = original
            await self.push_frame(TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=rate, num_channels=1,
                                                   context_id=str(chunk.segment)))
        for event in chunk.events:
            if isinstance(event, PlaybackFinished):
                self._audio.forget(event.segment)
                self._with_audio.discard(event.segment)
                self._cut.discard(event.segment)
                held = self._held.pop(event.segment, None)
                if held is not None and not event.interrupted:
                    await self.push_frame(held)
