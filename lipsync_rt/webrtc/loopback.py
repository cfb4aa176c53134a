"""A scripted WebRTC client on loopback: sends a face clip and speech, records what comes back.

Used by the tests and by ``lipsync-rt bench webrtc``. It plays the browser's part with aiortc: the
same offer (both tracks, or audio plus a receive-only video transceiver in avatar mode), the same
``POST /offer``, and paced tracks, so the server sees what a browser would send.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from ..errors import LipSyncError
from ..pipeline.clock import MediaClock
from .tracks import audio_frame


class ClipVideoTrack(MediaStreamTrack):
    """BGR frames played in a loop at ``fps``, paced on ``clock``."""

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], fps: float, clock: MediaClock) -> None:
        super().__init__()
        self._frames = [av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="bgr24") for f in frames]
        self._fps = fps
        self._clock = clock
        self._index = 0
        self.sent_times: list[float] = []

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        t = self._index / self._fps
        await self._clock.wait_until(t)
        frame = self._frames[self._index % len(self._frames)]
        out = frame.reformat(format="yuv420p")
        out.pts = int(round(t / VIDEO_TIME_BASE))
        out.time_base = VIDEO_TIME_BASE
        self._index += 1
        self.sent_times.append(time.monotonic())
        return out


class SpeechTrack(MediaStreamTrack):
    """16 kHz float32 mono speech in 20 ms s16 frames, looped, paced on ``clock``."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, clock: MediaClock, sample_rate: int = 16000) -> None:
        super().__init__()
        self._samples = np.asarray(samples, np.float32).reshape(-1)
        self._rate = sample_rate
        self._clock = clock
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self._rate // 50
        await self._clock.wait_until(self._pts / self._rate)
        idx = (self._pts + np.arange(n)) % len(self._samples)
        frame = audio_frame(self._samples[idx], self._pts, self._rate)
        self._pts += n
        return frame


@dataclass
class Received:
    """What came back: arrival times of video frames, a few decoded frames, audio frames and level."""

    video_times: list[float] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, BGR) every keep_every
    audio_frames: int = 0
    audio_samples: int = 0
    audio_peak: float = 0.0
    size: Optional[tuple[int, int]] = None

    def fps(self, skip_s: float = 0.5) -> float:
        """Frames per second after the first ``skip_s`` (the start-up burst is not the rate)."""
        if len(self.video_times) < 3:
            return 0.0
        t0 = self.video_times[0] + skip_s
        times = [t for t in self.video_times if t >= t0]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class LoopbackClient:
    """``session``: watch that push session (a viewer: sends nothing, receives both tracks)."""

    def __init__(self, base_url: str, *, mode: str = "camera", avatar: Optional[str] = None,
                 frames: Optional[Sequence[np.ndarray]] = None, speech: Optional[np.ndarray] = None,
                 fps: float = 25.0, token: Optional[str] = None, keep_every: int = 0,
                 session: Optional[str] = None) -> None:
        if session is not None:
            mode = "avatar"
        elif speech is None:
            raise LipSyncError("a client that is not a viewer needs speech to send")
        if mode == "camera" and not frames:
            raise LipSyncError("camera mode needs face frames to send")
        self.base_url = base_url.rstrip("/")
        self.mode, self.avatar, self.token = mode, avatar, token
        self.keep_every = keep_every
        self.received = Received()
        self.session_id: Optional[str] = None
        self.watch = session
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._clock = MediaClock()
        self.video_out = ClipVideoTrack(frames, fps, self._clock) if mode == "camera" else None
        self.audio_out = SpeechTrack(speech, self._clock) if session is None else None
        self._tasks: list[asyncio.Task] = []
        self.pc.on("track", self._on_track)

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _on_track(self, track: MediaStreamTrack) -> None:
        reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
        self._tasks.append(asyncio.ensure_future(reader))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            rec = self.received
            rec.video_times.append(now)
            rec.video_pts.append(frame.pts)
            rec.size = (frame.width, frame.height)
            if self.keep_every and len(rec.video_times) % self.keep_every == 0:
                rec.frames.append((now, frame.to_ndarray(format="bgr24")))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = frame.to_ndarray()
            self.received.audio_frames += 1
            self.received.audio_samples += frame.samples
            self.received.audio_peak = max(self.received.audio_peak, float(np.abs(pcm).max()) / 32768.0)

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """Offer, wait for the answer; raises LipSyncError with the server's reason when refused."""
        if self.audio_out is not None:
            self.pc.addTrack(self.audio_out)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        if self.video_out is not None:
            self.pc.addTrack(self.video_out)
        else:
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "mode": self.mode}
        if self.avatar:
            body["avatar"] = self.avatar
        if self.watch:
            body["session"] = self.watch
        async with http.post(f"{self.base_url}/offer", json=body, headers=self._headers()) as response:
            answer = await response.json()
            if response.status != 200:
                raise LipSyncError(f"offer refused ({response.status}): {answer.get('error')}")
        self.session_id = answer.get("viewer", answer["session"])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def close(self, http: Optional[aiohttp.ClientSession] = None) -> None:
        if http is not None and self.session_id:
            async with http.post(f"{self.base_url}/close", json={"session": self.session_id},
                                 headers=self._headers()) as response:
                await response.read()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
