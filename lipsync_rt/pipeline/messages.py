"""The messages that flow between stages: small frozen dataclasses with explicit pts and time bases.

Public: :class:`OutputFrame` and :class:`OutputAudio`, what a session hands its sinks. The rest are
internal to the graph. Video pts count frames (time base 1/fps); audio pts count samples at 16 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

import numpy as np

from lipsync_rt.face import FaceTrack


@dataclass(frozen=True, eq=False)
class OutputFrame:
    """One output video frame. ``generated`` is False when it passed through unchanged (no face,
    engine error, dropped result, idle); ``capture_time`` is ``time.monotonic()`` when the newest
    input that drove it arrived (None when nothing was measured, e.g. offline)."""

    image: np.ndarray
    pts: int
    time_base: Fraction
    generated: bool
    capture_time: Optional[float]

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


@dataclass(frozen=True, eq=False)
class OutputAudio:
    """A stretch of the session's audio (float32 mono in [-1, 1]); pts in samples at ``sample_rate``."""

    samples: np.ndarray
    pts: int
    sample_rate: int

    @property
    def time(self) -> float:
        return self.pts / self.sample_rate


@dataclass(frozen=True, eq=False)
class MelWindow:
    """Frame ``index``'s 80x16 mel window; ``arrival`` is when its last needed sample came in;
    ``idle`` when it lies wholly in filled-in silence."""

    index: int
    window: np.ndarray
    arrival: Optional[float]
    idle: bool


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """The picture for output frame ``index`` and its face (None: no face found)."""

    index: int
    image: np.ndarray
    track: Optional[FaceTrack]
    capture_time: Optional[float]
    avatar_index: Optional[int] = None     # avatar frame shown, avatar mode only
    dropped: bool = False                  # camera mode: taken while the tracker was behind, not tracked


@dataclass(frozen=True, eq=False)
class Job:
    """Everything needed to produce output frame ``index``."""

    frame: SourceFrame
    mel: MelWindow

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def capture_time(self) -> Optional[float]:
        times = [t for t in (self.frame.capture_time, self.mel.arrival) if t is not None]
        return max(times) if times else None


@dataclass(frozen=True, eq=False)
class Result:
    """A finished frame waiting for its release time; ``reason`` says why it was not generated."""

    index: int
    image: Optional[np.ndarray]            # None: nothing to show for this slot (no camera frame yet)
    generated: bool
    capture_time: Optional[float]
    ready: float
    reason: Any = None
