"""The media clock: the audio sample counter is the master; video frame i lives at t_i = i / fps.

Live sessions map media time to wall time with one anchor, T0 (``time.monotonic()`` when the session
started): media time t is due at ``T0 + t`` and leaves the session at ``T0 + t + D``. D = L + the
processing budget, fixed for the session, so A/V sync at a sink is exact by construction and any
frame that is not ready in time is replaced rather than waited for.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from fractions import Fraction
from typing import Callable, Optional

from lipsync_rt.audio import MELS_PER_SECOND, SAMPLE_RATE, lookahead_samples

#: The public checkpoints' own look-ahead: frame i's window ends with column start_i + 15, which is
#: final once sample (start_i + 15) * HOP + 400 has come (StreamingMel), and start_i * HOP <= t_i * 16000.
LOOKAHEAD_SAMPLES = lookahead_samples(0)
LOOKAHEAD = LOOKAHEAD_SAMPLES / SAMPLE_RATE          # 0.2125 s


def lookahead(mel_offset: int = 0) -> float:
    """L in seconds for a model whose window starts ``mel_offset`` columns from the reference's."""
    return lookahead_samples(mel_offset) / SAMPLE_RATE


def as_rate(fps: float) -> Fraction:
    """29.97 -> 30000/1001, 25.0 -> 25: exact frame times without float drift."""
    return Fraction(fps).limit_denominator(1001)


class MediaClock:
    """Frame/sample arithmetic for one session, plus the wall-clock anchor once live."""

    def __init__(self, fps: float, delay: float = 0.0, mel_offset: int = 0) -> None:
        self.rate = as_rate(fps)
        self.mel_offset = int(mel_offset)
        self.time_base = 1 / self.rate
        self.mel_step = MELS_PER_SECOND / float(fps)   # float, exactly as mel_chunks computes starts
        self.delay = float(delay)
        self.t0: Optional[float] = None

    def frame_time(self, index: int) -> float:
        return float(index * self.time_base)

    def frame_sample(self, index: int) -> int:
        """First sample of frame ``index``'s time slot."""
        return math.floor(index * self.time_base * SAMPLE_RATE)

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

    def frame_due(self, now: float) -> float:
        """Media time at wall time ``now`` in frames (fractional)."""
        assert self.t0 is not None
        return (now - self.t0) * float(self.rate)

    def capture_deadline(self, index: int) -> float:
        """Wall time at which frame ``index``'s picture is taken (camera mode)."""
        assert self.t0 is not None
        return self.t0 + self.frame_time(index)

    def release_time(self, index: int) -> float:
        assert self.t0 is not None
        return self.t0 + self.frame_time(index) + self.delay

    def audio_release_time(self, sample: int) -> float:
        assert self.t0 is not None
        return self.t0 + sample / SAMPLE_RATE + self.delay


async def sleep_until(deadline: float) -> None:
    """asyncio.sleep to a monotonic deadline (the loop's timer is monotonic too)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class LoopLagProbe:
    """Measures how late the event loop wakes a sleeping task: the longest any stage blocked it.

    Runs as its own task; ``lags_ms`` holds one figure per wake-up (most recent 100 000).
    """

    def __init__(self, interval: float = 0.005, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.lags_ms: deque[float] = deque(maxlen=100_000)
        self._clock = clock
        self._task: Optional[asyncio.Task] = None

    def start(self) -> "LoopLagProbe":
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")
        return self

    async def _run(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self.interval)
            self.lags_ms.append(max(0.0, (self._clock() - before - self.interval) * 1000.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
