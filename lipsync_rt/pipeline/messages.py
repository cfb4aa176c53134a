"""The messages that flow between stages: small frozen dataclasses with explicit pts and time bases.

Public: :class:`OutputFrame` and :class:`OutputAudio`, what a session hands its sinks. The rest are
internal to the graph, in the order a frame meets them::

    MelWindow ─┐
               ├─► Job ─► (engine) ─► GeneratedFaces ─► (blend) ─► FrameResult ─► OutputFrame
    SourceFrame┘     └──────── passed through unchanged ──────────► FrameResult ─┘

Video pts count frames (time base 1/fps); audio pts count samples at 16 kHz. Every message on its
way to release carries the ``generation`` it was made in (a :class:`Generation` shared by the stages):
``interrupt()`` advances it, and the release stage lets through only the current one, so whatever is
still in a queue or in the engine when a barge-in comes is discarded where it lands; the stages
before release drop stale messages early only to save work (docs/architecture.md, "Interruption").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Hashable, Optional, Sequence, Union

import numpy as np

from lipsync_rt.face import FaceTrack

if TYPE_CHECKING:
    from .segments import SegmentEvent


class Generation:
    """The number of the speech a message belongs to; ``interrupt()`` advances it.

    One object per session, shared by the stages: a message whose generation is not ``current`` is
    stale. Advancing is safe from any thread (pushes stamp their audio with the generation current
    when they were made, so audio pushed after an ``interrupt()`` call is never taken for old).
    """

    def __init__(self) -> None:
        self.current = 0
        self._lock = threading.Lock()

    def advance(self) -> int:
        with self._lock:
            self.current += 1
            return self.current

    def stale(self, generation: int) -> bool:
        return generation != self.current


@dataclass(frozen=True, eq=False)
class OutputFrame:
    """One output video frame. ``generated`` is False when it passed through unchanged (no face,
    engine error, dropped result, idle); ``idle`` when it shows the idle picture because there is no
    speech (silence, between segments, after an interrupt); ``held`` when its mouth was not ready in
    time and it shows the last generated one instead of snapping to the original (``conceal.py``);
    ``capture_time`` is ``time.monotonic()`` when the newest input that drove it arrived (None when
    nothing was measured, e.g. offline)."""

    image: np.ndarray
    pts: int
    time_base: Fraction
    generated: bool
    capture_time: Optional[float]
    idle: bool = False
    held: bool = False

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


@dataclass(frozen=True, eq=False)
class OutputAudio:
    """A stretch of the session's audio (float32 mono in [-1, 1]); pts in samples at ``sample_rate``.

    ``segment``: the speech segment these samples belong to (None: silence or audio pushed without a
    segment); a chunk never spans two segments. ``segment_position``: how many samples of that segment
    were released before this chunk, so an adapter can play the segment's original, unresampled audio
    in step (sample ``segment_position * rate / 16000`` of what was pushed). ``events``: the segment
    events since the previous chunk left, including those this chunk causes (its first sample starts a
    segment, its last one finishes it); the same events go to ``session.events()``. ``source``: with
    ``SessionConfig(source_audio=True)``, the same stretch of the audio as it was pushed, float32
    ``(m, channels)`` at ``source_rate`` (silence where this chunk is filled-in silence).
    """

    samples: np.ndarray
    pts: int
    sample_rate: int
    segment: Optional[Hashable] = None
    segment_position: int = 0
    events: tuple["SegmentEvent", ...] = ()
    source: Optional[np.ndarray] = None
    source_rate: Optional[int] = None

    @property
    def time(self) -> float:
        return self.pts / self.sample_rate


@dataclass(frozen=True, eq=False)
class MelWindow:
    """Frame ``index``'s 80x16 mel window; ``arrival`` is when its last needed sample came in (None
    offline, where nothing is timed); ``idle`` when it lies wholly in filled-in silence."""

    index: int
    window: np.ndarray
    arrival: Optional[float]
    idle: bool
    generation: int = 0


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """The picture for output frame ``index`` and its face (None: no face found)."""

    index: int
    image: np.ndarray
    track: Optional[FaceTrack]
    capture_time: Optional[float]
    avatar_index: Optional[int] = None     # avatar frame shown, avatar mode only
    dropped: bool = False                  # camera mode: taken while the tracker was behind, not tracked
    idle: bool = False                     # a picture of the avatar's idle clip: shown as it is


@dataclass(frozen=True, eq=False)
class Job:
    """Everything needed to generate output frame ``index``: its picture and its mel window."""

    frame: SourceFrame
    mel: MelWindow

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def generation(self) -> int:
        return self.mel.generation

    @property
    def capture_time(self) -> Optional[float]:
        times = [t for t in (self.frame.capture_time, self.mel.arrival) if t is not None]
        return max(times) if times else None


#: The model's face input for a batch: 6x96x96 crops, or an avatar's cached encoder features.
FaceBatch = Union[np.ndarray, Sequence[np.ndarray]]


@dataclass(frozen=True, eq=False)
class GeneratedFaces:
    """One engine batch's output: ``faces[k]`` (3x96x96 in [0, 1], BGR) is the mouth of ``jobs[k]``."""

    jobs: list[Job]
    faces: np.ndarray


#: Why a frame left without a generated mouth. ``PENDING`` marks the stand-in a job leaves at the
#: release stage: what goes out (as a drop) if the generated frame is not back by its release time.
PENDING, DROPPED, NO_FACE, IDLE, ERROR, NO_PICTURE = "pending", "dropped", "no_face", "idle", "error", "no_picture"


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What output frame ``index`` will show: a generated frame (``reason`` None) or its picture passed
    through unchanged, with the reason. ``image`` None: nothing to show (camera mode before the first
    camera frame); the slot is skipped. ``avatar_index`` and ``box``: the picture it was made from and
    its face box, for concealing a drop (``conceal.py``); ``held``: a drop shown with a held mouth."""

    index: int
    image: Optional[np.ndarray]
    generated: bool
    capture_time: Optional[float]
    reason: Optional[str] = None
    generation: int = 0
    avatar_index: Optional[int] = None
    box: Optional[tuple] = None
    held: bool = False

    @classmethod
    def passed_through(cls, frame: SourceFrame, reason: str, generation: int = 0) -> "FrameResult":
        box = tuple(frame.track.box) if frame.track is not None and hasattr(frame.track, "box") else None
        return cls(frame.index, frame.image, False, frame.capture_time, reason, generation, frame.avatar_index, box)

    @classmethod
    def nothing(cls, index: int, generation: int = 0) -> "FrameResult":
        return cls(index, None, False, None, NO_PICTURE, generation)

    @property
    def final(self) -> bool:
        return self.reason != PENDING
