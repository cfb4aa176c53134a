"""The media clock: the audio sample counter is the master; video frame i lives at t_i = i / fps.

A session maps media time to wall time with one anchor, T0 (``time.monotonic()`` when it started):
media time t is due at ``T0 + t`` and leaves the session at ``T0 + t + D``. D = L + the processing
budget, the same for video and audio, so A/V sync at a sink is exact by construction and any frame
that is not ready in time is replaced rather than waited for. A late frame never makes D grow; the
load can, in a pause of the speech (``playout.py``). Video and audio are released on this one
clock; a WebRTC peer paces its outgoing tracks on one too. docs/architecture.md, "Timing", derives L.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from lipsync_rt.audio import MELS_PER_SECOND, SAMPLE_RATE, lookahead_samples
from lipsync_rt.timebase import as_rate

__all__ = ["LOOKAHEAD", "LOOKAHEAD_SAMPLES", "MediaClock", "as_rate", "lookahead", "sleep_until"]

#: The public checkpoints' own look-ahead: frame i's window ends with column start_i + 15, which is
#: final once sample (start_i + 15) * HOP + 400 has come (StreamingMel), and start_i * HOP <= t_i * 16000.
LOOKAHEAD_SAMPLES = lookahead_samples(0)
LOOKAHEAD = LOOKAHEAD_SAMPLES / SAMPLE_RATE          # 0.2125 s


def lookahead(mel_offset: int = 0) -> float:
    """L in seconds for a model whose window starts ``mel_offset`` columns from the reference's."""
    return lookahead_samples(mel_offset) / SAMPLE_RATE


class MediaClock:
    """Frame/sample arithmetic for one stream, and its wall-clock anchor T0 once started.

    ``time_base`` is 1/fps as an exact fraction (video pts count frames); audio pts count samples at
    16 kHz. ``delay`` is D, the fixed distance between media time and release time.
    """

    def __init__(self, fps: float = 25.0, delay: float = 0.0, mel_offset: int = 0) -> None:
        self.rate = as_rate(fps)
        self.mel_offset = int(mel_offset)
        self.time_base = 1 / self.rate
        self.mel_step = MELS_PER_SECOND / float(fps)   # float, exactly as mel_chunks computes starts
        self.delay = float(delay)
        self.t0: Optional[float] = None

    def frame_time(self, index: int) -> float:
        return float(index * self.time_base)

    def mel_start(self, index: int) -> int:
        """First mel column of frame ``index``'s window: the reference's ``int(i * 80 / fps)`` moved by
        the model's ``mel_offset`` (negative before the stream's first column: silence)."""
        return int(index * self.mel_step) + self.mel_offset

    def start(self, now: Optional[float] = None) -> None:
        self.t0 = time.monotonic() if now is None else now

    def sample_due(self, now: float) -> float:
        """How many samples the clock says should have come by wall time ``now``."""
        assert self.t0 is not None
        return (now - self.t0) * SAMPLE_RATE

    def capture_deadline(self, index: int) -> float:
        """Wall time at which frame ``index``'s picture is taken (camera mode)."""
        assert self.t0 is not None
        return self.t0 + self.frame_time(index)

    def release_time(self, index: int) -> float:
        """Wall time at which video frame ``index`` leaves: T0 + t_i + D."""
        assert self.t0 is not None
        return self.t0 + self.frame_time(index) + self.delay

    def audio_release_time(self, sample: int) -> float:
        """Wall time at which audio sample ``sample`` leaves: T0 + sample / 16000 + D."""
        assert self.t0 is not None
        return self.t0 + sample / SAMPLE_RATE + self.delay

    async def wait_until(self, media_time: float) -> float:
        """Sleep until ``media_time`` (seconds) is due for release; return how late it already was.

        A clock that was never started is anchored by its first call (that media time is due now), which
        is how a WebRTC peer paces whatever a session hands it: never faster than real time.
        """
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now - media_time - self.delay
        due = self.t0 + media_time + self.delay
        if due > now:
            await asyncio.sleep(due - now)
            return 0.0
        return now - due


async def sleep_until(deadline: float) -> None:
    """asyncio.sleep to a monotonic deadline (the loop's timer is monotonic too)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)

