"""An RTMP sink: a session's output as H.264 + AAC in FLV, pushed to a streaming server through PyAV.

Like every sink it is fed by :func:`~lipsync_rt.io.sinks.run_sinks` in its worker thread, so it is
paced by the session clock: a live session releases frame i and its audio at T0 + t_i + D, and the
sink writes each as it comes (``-re`` is not needed, nothing is sent ahead of time).

Each connection is a new FLV stream: its encoders start afresh (the first video packet is a key
frame) and its timestamps start at 0 at the first frame written to it, audio placed by its media time
relative to that frame, so lips and sound stay together across reconnects. The audio is resampled to
44.1 kHz stereo, what streaming platforms expect.

When the server drops (a write fails) or cannot be reached, the sink does not stop: it closes what is
left, counts every frame and every second of audio it could not send (``stats``), and tries again
after a back-off that doubles from ``retry_s`` up to ``max_retry_s``, for as long as the session runs.
A connection attempt blocks the sink's own thread for at most ``timeout_s`` (``_unreachable`` says why
it does not block the event loop too).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Optional
from urllib.parse import urlsplit

import numpy as np

from lipsync_rt.pipeline import OutputAudio, OutputFrame
from lipsync_rt.timebase import as_rate

log = logging.getLogger(__name__)
AUDIO_RATE = 44100
#: how long a one-shot RTMP listener gets to listen again after the reachability probe took its connection
RELISTEN_S = 0.2


@dataclass(frozen=True)
class RtmpStats:
    """What the sink did: connections made (the first and every reconnect), failures, and losses."""

    connects: int = 0
    failures: int = 0              # connections that failed to open or broke
    frames_sent: int = 0
    frames_lost: int = 0           # frames released while the stream was down
    audio_sent_s: float = 0.0
    audio_lost_s: float = 0.0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


class RtmpSink:
    """``url``: rtmp:// or rtmps://; ``fps``: the session's frame rate. Not thread-safe: one sink thread."""

    def __init__(self, url: str, fps: float | Fraction = 25, *, video_bitrate: int = 2_000_000,
                 audio_bitrate: int = 128_000, keyframe_s: float = 2.0, retry_s: float = 0.5,
                 max_retry_s: float = 10.0, timeout_s: float = 3.0) -> None:
        self.url = url
        self.rate = as_rate(fps)
        self.video_bitrate, self.audio_bitrate = video_bitrate, audio_bitrate
        self.gop = max(1, round(keyframe_s * float(self.rate)))
        self.retry_s, self.max_retry_s, self.timeout_s = retry_s, max_retry_s, timeout_s
        self.stats = RtmpStats()
        self._container = None
        self._video = self._audio = self._resampler = None
        self._size: Optional[tuple[int, int]] = None
        self._base: Optional[Fraction] = None      # media time of the connection's first frame
        self._audio_next: Optional[int] = None     # next audio pts (samples at AUDIO_RATE) on this connection
        self._retry_at = 0.0
        self._backoff = retry_s
        self._closed = False

    # -- the connection
    def _connect(self, width: int, height: int) -> bool:
        import av

        if time.monotonic() < self._retry_at:
            return False
        why = _unreachable(self.url, self.timeout_s)
        if why is not None:
            self._failed(f"cannot connect: {why}")
            return False
        try:
            container, video, audio = self._open(width, height)
        except (av.FFmpegError, OSError, ValueError):
            # A one-shot listener (FFmpeg's or ffplay's ``-listen 1``) takes the probe above as its
            # connection and must listen again: give it a moment, once.
            time.sleep(RELISTEN_S)
            try:
                container, video, audio = self._open(width, height)
            except (av.FFmpegError, OSError, ValueError) as error:
                self._failed(f"cannot connect: {error}")
                return False
        self._container, self._video, self._audio = container, video, audio
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self._base, self._audio_next = None, None
        self._backoff = self.retry_s
        self.stats = replace(self.stats, connects=self.stats.connects + 1)
        log.info("RTMP: connected to %s%s", _redact(self.url),
                 f" (reconnect {self.stats.reconnects})" if self.stats.connects > 1 else "")
        return True

    def _open(self, width: int, height: int) -> tuple:
        """The FLV container and its two streams, connected (the RTMP handshake done); raises if not."""
        import av

        options = {"rw_timeout": str(int(self.timeout_s * 1e6)), "flvflags": "no_duration_filesize"}
        container = av.open(self.url, "w", format="flv", options=options, timeout=self.timeout_s)
        try:                                  # (opening only parses the URL; nothing is sent yet)
            video = container.add_stream("libx264", rate=self.rate)
            video.width, video.height, video.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
            video.bit_rate = self.video_bitrate
            video.codec_context.time_base = 1 / self.rate
            video.codec_context.gop_size = self.gop
            video.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0"}
            audio = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            audio.bit_rate = self.audio_bitrate
            container.start_encoding()        # the TCP connection and the RTMP handshake happen here
        except BaseException:
            _close_quietly(container)
            raise
        return container, video, audio

    def _failed(self, why: str) -> None:
        """The stream is down: drop the connection, count it, and wait before the next attempt."""
        if self._container is not None:
            _close_quietly(self._container)
        self._container = self._video = self._audio = self._resampler = None
        self.stats = replace(self.stats, failures=self.stats.failures + 1)
        self._retry_at = time.monotonic() + self._backoff
        log.warning("RTMP %s: %s; trying again in %.1f s", _redact(self.url), why, self._backoff)
        self._backoff = min(self.max_retry_s, self._backoff * 2)

    # -- the sink protocol
    def write_video(self, frame: OutputFrame) -> None:
        import av

        height, width = frame.image.shape[:2]
        if self._size is None:
            self._size = (width, height)
        if self._container is None and (self._closed or not self._connect(*self._size)):
            self.stats = replace(self.stats, frames_lost=self.stats.frames_lost + 1)
            return
        time_ = frame.pts * frame.time_base
        if self._base is None:
            self._base = time_
        image = frame.image
        if (width, height) != (self._video.width, self._video.height):
            image = _pad_to(image, self._video.width, self._video.height)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        out.pts = round((time_ - self._base) * self.rate)
        out.time_base = 1 / self.rate
        try:
            for packet in self._video.encode(out):
                self._container.mux(packet)
        except (av.FFmpegError, OSError) as error:
            self._failed(f"the connection broke: {error}")
            self.stats = replace(self.stats, frames_lost=self.stats.frames_lost + 1)
            return
        self.stats = replace(self.stats, frames_sent=self.stats.frames_sent + 1)

    def write_audio(self, chunk: OutputAudio) -> None:
        import av

        seconds = chunk.samples.shape[0] / chunk.sample_rate
        if self._container is None or self._base is None:      # down, or no frame yet on this connection
            if self._container is None:
                self.stats = replace(self.stats, audio_lost_s=self.stats.audio_lost_s + seconds)
            return
        start = Fraction(chunk.pts, chunk.sample_rate) - self._base
        if start + seconds <= 0:
            return                                             # before the connection's first frame
        x = np.asarray(chunk.samples, np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1)
        if start < 0:                                          # starts a little before it: its tail only
            x = x[round(-start * chunk.sample_rate):]
            start = Fraction(0)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.reshape(1, -1)), format="flt", layout="mono")
        frame.sample_rate = chunk.sample_rate
        try:
            for out in self._resampler.resample(frame):
                if self._audio_next is None:
                    self._audio_next = round(start * AUDIO_RATE)
                out.pts, out.time_base = self._audio_next, Fraction(1, AUDIO_RATE)
                self._audio_next += out.samples
                for packet in self._audio.encode(out):
                    self._container.mux(packet)
        except (av.FFmpegError, OSError) as error:
            self._failed(f"the connection broke: {error}")
            self.stats = replace(self.stats, audio_lost_s=self.stats.audio_lost_s + seconds)
            return
        self.stats = replace(self.stats, audio_sent_s=self.stats.audio_sent_s + seconds)

    def close(self) -> None:
        """Flush the encoders and end the stream; a broken connection is only logged."""
        import av

        self._closed = True
        container, self._container = self._container, None
        if container is None:
            return
        try:
            for packet in self._video.encode():
                container.mux(packet)
            for packet in self._audio.encode():
                container.mux(packet)
        except (av.FFmpegError, OSError) as error:
            log.warning("RTMP %s: the end of the stream was not sent: %s", _redact(self.url), error)
        _close_quietly(container)
        s = self.stats
        log.info("RTMP %s: sent %d frames, %.1f s of audio; lost %d frames, %.1f s of audio; %d reconnects",
                 _redact(self.url), s.frames_sent, s.audio_sent_s, s.frames_lost, s.audio_lost_s, s.reconnects)


def _unreachable(url: str, timeout: float) -> Optional[str]:
    """Why the server's TCP port does not answer (None if it does).

    PyAV holds the GIL while FFmpeg connects and shakes hands, so a server that does not answer would
    stall every thread of the process (the event loop too) for the whole timeout; a plain socket
    connect first releases the GIL while it waits, and FFmpeg only connects to a server that is there.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "rtmps" else 1935)
    except ValueError:
        return f"bad port in {url!r}"
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__


def _pad_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Replicate the last row/column up to an even size (yuv420p), or crop if the picture changed size."""
    h, w = image.shape[:2]
    image = image[:height, :width]
    return np.pad(image, ((0, max(0, height - h)), (0, max(0, width - w)), (0, 0)), mode="edge")


def _close_quietly(container) -> None:
    try:
        container.close()
    except Exception:  # noqa: BLE001 - closing a broken connection fails in many ways; it is gone anyway
        pass


def _redact(url: str) -> str:
    """The URL without its last path part, which for most platforms is the secret stream key."""
    head, _, key = url.rpartition("/")
    return f"{head}/…" if head and key and "://" in head else url
