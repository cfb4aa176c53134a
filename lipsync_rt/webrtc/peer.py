"""One browser (or any WebRTC client): its peer connection, the session it sees, and their tasks.

A peer either owns its session (the browser's microphone or camera drives it: closing the peer closes
the session's :class:`~lipsync_rt.webrtc.hub.SessionHub`) or is a *viewer* of a session driven by the
audio-push API (it reads the hub's broadcast; closing it only unsubscribes, and whatever it sends is
discarded). Either way its tracks read a :class:`~lipsync_rt.io.fanout.Subscription` of the hub.

Everything a peer starts it also ends: :meth:`Peer.close` stops the outgoing tracks, cancels the
readers and the connect watchdog, closes the connection and the session, and folds the session's
figures into the server's totals. It runs once, whichever comes first: the client's ``/close``, a
failed or closed connection, a connection that never came up, or the server shutting down.

Then it cuts every link from aiortc's objects back to the session: aiortc keeps a closed
connection's senders (and so their tracks and the connection's event listeners) until its own connect
task ends, which for a client that never finished connecting can be much later or never. The tracks
let go of the session's iterators and the connection forgets its listeners, so a closed session is
freed at once (``tests/test_webrtc_memory.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Callable, Optional

from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack

from ..pipeline.clock import MediaClock
from ..pipeline.messages import OutputFrame
from .metrics import RateMeter, ServerMetrics
from .tracks import SessionAudioTrack, SessionVideoTrack, read_audio, read_video_newest

if TYPE_CHECKING:
    from .hub import SessionHub

#: frames a viewer's video may fall behind the session before the oldest are skipped (240 ms at 25 fps)
PEER_VIDEO_KEPT = 6

log = logging.getLogger(__name__)


class Peer:
    def __init__(self, pc: RTCPeerConnection, hub: "SessionHub", mode: str, metrics: ServerMetrics,
                 on_closed: Callable[["Peer"], None], *, viewer: bool = False) -> None:
        self.id = secrets.token_urlsafe(16) if viewer else hub.id
        self.short_id = self.id[:8]
        self.pc = pc
        self.hub = hub
        self.session = hub.session
        self.viewer = viewer
        self.mode = mode
        self.metrics = metrics
        self.fps = RateMeter()
        self.frames_sent = 0
        self.created = time.monotonic()
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task] = set()
        self._closing: Optional[asyncio.Future] = None
        self.closed = asyncio.Event()
        self.registered = False  # set by the server once the answer is out; only then is it counted
        self._blackhole = MediaBlackhole()  # reads a camera nobody uses, so aiortc's queue cannot grow
        clock = MediaClock()
        # a live viewer gets recent pictures: when its encoder falls behind (an overloaded machine), the
        # oldest waiting frames go, so the delay stays bounded instead of growing by seconds
        self._media = hub.subscribe(f"peer {self.short_id}", video_kept=PEER_VIDEO_KEPT)
        self.video_track = SessionVideoTrack(self._media.video(), clock, on_frame=self._sent_video)
        self.audio_track = SessionAudioTrack(self._media.audio(), clock, on_frame=self._sent_audio)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    # -- outgoing
    def _sent_video(self, item: OutputFrame) -> None:
        self.frames_sent += 1
        self.fps.tick()
        self.metrics.frames_sent += 1
        if item.generated:
            self.metrics.frames_generated += 1
        if item.capture_time is not None:
            self.metrics.observe_latency(time.monotonic() - item.capture_time)

    def _sent_audio(self) -> None:
        self.metrics.audio_frames_sent += 1

    # -- incoming
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dropped_input(self, count: int) -> None:
        self.metrics.input_frames_dropped += count

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.viewer:             # a viewer's microphone or camera drives nothing
            self._blackhole.addTrack(track)
            self._spawn(self._blackhole.start())
        elif track.kind == "audio":
            self._spawn(read_audio(track, self.session.push_audio))
        elif self.mode == "camera":
            self._spawn(read_video_newest(track, self.session.push_video, self._dropped_input))
        else:                       # avatar mode has no use for a camera
            self._blackhole.addTrack(track)
            self._spawn(self._blackhole.start())

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close_soon(f"connection {self.pc.connectionState}")

    def watch_connect(self, timeout: float) -> None:
        """Close the peer if its connection is not up within ``timeout`` seconds (a client that vanished)."""
        async def watchdog() -> None:
            await asyncio.sleep(timeout)
            if self.pc.connectionState != "connected":
                self.close_soon(f"not connected after {timeout:g} s")

        self._spawn(watchdog())

    # -- ending
    def close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))

    async def close(self, reason: str = "closed") -> None:
        """Idempotent; every caller returns once the cleanup is complete."""
        self.close_soon(reason)
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        log.info("session %s closing: %s", self.short_id, reason)
        self.video_track.stop()
        self.audio_track.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._blackhole.stop()
        try:
            await self.pc.close()
        except Exception:  # noqa: BLE001 - a broken transport must not stop the rest of the cleanup
            log.exception("session %s: closing the peer connection failed", self.short_id)
        if self.viewer:
            self.hub.broadcast.unsubscribe(self._media)
        else:
            try:
                stats = self.session.stats()
                self.metrics.pipeline_frames_dropped_closed += stats.frames_dropped
                self.metrics.engine_errors_closed += stats.engine_errors
            except Exception:  # noqa: BLE001
                log.exception("session %s: stats failed", self.short_id)
            await self.hub.close()      # the session, and its recording finalised
        await self.video_track.detach()
        await self.audio_track.detach()
        self.pc.remove_all_listeners()
        if self.registered:
            self.metrics.sessions_ended += 1
        self.closed.set()
        self._on_closed(self)
