"""A served session and everything that reads its output: viewers, the recording, the RTMP stream.

The server makes one :class:`SessionHub` per lip-sync session, whichever way its speech comes (a
browser's microphone or the audio-push API). The hub reads the session's output once
(:class:`~lipsync_rt.io.fanout.Broadcast`) and hands it to each reader: every WebRTC viewer, a
recording into ``DIR/<session>.mp4`` (``--record``) and an RTMP stream. :meth:`SessionHub.close` is
the one way a served session ends: the session closes, its output ends, and the recording is
finalised (written to a temporary file and renamed into place) before it returns, so a file exists
once the session is gone, whether it ended by request, by a peer that vanished, or by Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..io.fanout import Broadcast, Subscription
from .shared_video import SharedEncoders

if TYPE_CHECKING:
    from ..io.rtmp import RtmpSink
    from ..pipeline import LipSyncSession

log = logging.getLogger(__name__)

#: Items a recording (or RTMP stream) may fall behind before the oldest leave: a minute of output, so
#: a slow disk or encoder loses nothing in practice, yet memory stays bounded.
SINK_VIDEO_KEPT = 1500
SINK_AUDIO_KEPT = 6000


class SessionHub:
    """``session`` (started) under ``id``; ``record_dir``: write its output to ``record_dir/<id>.mp4``;
    ``rtmp``: also send it to this RTMP URL."""

    def __init__(self, session: "LipSyncSession", id: str, *, record_dir: Optional[Path] = None,
                 rtmp: Optional[str] = None) -> None:
        self.session = session
        self.id = id
        self.broadcast = Broadcast(session)
        self.encoders = SharedEncoders()      # viewers' video, encoded once per codec
        self.record_path = Path(record_dir) / f"{id}.mp4" if record_dir is not None else None
        self.rtmp_url = rtmp
        self.rtmp: Optional["RtmpSink"] = None
        self._tasks: list[asyncio.Task] = []
        self._closing: Optional[asyncio.Future] = None
        self.record_error: Optional[BaseException] = None

    def subscribe(self, name: str, **kept: int) -> Subscription:
        return self.broadcast.subscribe(name, **kept)

    def start(self) -> None:
        """Start the sinks' readers, then the broadcast (readers made before this miss nothing)."""
        if self.record_path is not None:
            sub = self.subscribe("record", video_kept=SINK_VIDEO_KEPT, audio_kept=SINK_AUDIO_KEPT)
            self._tasks.append(asyncio.ensure_future(self._record(sub)))
        if self.rtmp_url is not None:
            from ..io.rtmp import RtmpSink

            self.rtmp = RtmpSink(self.rtmp_url, self.session.config.fps)
            sub = self.subscribe("rtmp", video_kept=SINK_VIDEO_KEPT, audio_kept=SINK_AUDIO_KEPT)
            self._tasks.append(asyncio.ensure_future(self._run_sink(sub, self.rtmp, "RTMP stream")))
        self.broadcast.start()

    async def _record(self, sub: Subscription) -> None:
        from ..io import Mp4Sink

        # The session's own output: 16 kHz mono audio (what every viewer hears), frames at its rate.
        sink = Mp4Sink(self.record_path, self.session.config.fps, audio_rate=16000, audio_channels=1)
        await self._run_sink(sub, sink, "recording")

    async def _run_sink(self, sub: Subscription, sink, what: str) -> None:
        from ..io import run_sinks

        try:
            await run_sinks(sub, [sink])          # closes (finalises) the sink however the run ends
        except Exception as error:  # noqa: BLE001 - a full disk must not take the session down
            self.record_error = error
            log.error("session %s: the %s failed: %s", self.id[:8], what, error)
        if sub.dropped_video or sub.dropped_audio:
            log.warning("session %s: the %s fell behind and lost %d frames, %d audio chunks", self.id[:8], what,
                        sub.dropped_video, sub.dropped_audio)

    async def close(self) -> None:
        """Close the session, end its output, finish the recording and the stream. Idempotent; every
        caller returns once all of it is done."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await self.session.close()
        except Exception:  # noqa: BLE001 - the sinks are finalised whatever the session did
            log.exception("session %s: closing the pipeline failed", self.id[:8])
        await self.broadcast.close()
        # The sinks end after what they have queued; the mp4 is renamed into place here.
        await asyncio.gather(*self._tasks, return_exceptions=True)
