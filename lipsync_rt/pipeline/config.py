"""A session's settings and the figures it reports.

Times are seconds on the audio-sample master clock unless a name says otherwise (``_ms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lipsync_rt.errors import LipSyncError
from lipsync_rt.timebase import as_rate


@dataclass(frozen=True)
class SessionConfig:
    """How one :class:`~lipsync_rt.pipeline.LipSyncSession` runs.

    ``live``: real-time pacing (video frame i and its audio leave at ``T0 + i/fps + D``), the oldest
    waiting video is dropped when processing falls behind, audio is never dropped, D grows only with
    the load and only in pauses.
    Offline: nothing is dropped or paced, stages throttle each other through bounded queues, and the
    output equals the batch ``infer`` path.

    ``overhead_ms`` is the processing budget D - L, fixed for the session when given. None picks it
    at start() from a warm-up measurement of the engine (``calibration.measure_overhead``) and then
    lets it grow with the load, up to ``max_overhead_ms``, in pauses of the speech (``playout.py``);
    ``max_overhead_ms`` None keeps the measured budget.
    ``audio_grace_ms``: in live mode, audio that is this late is replaced by silence (then appended
    when it comes), so one slow push does not make every later frame miss its release time.
    ``skip_silence``: frames whose whole mel window lies in such filled silence are not generated
    (an idle avatar costs no inference); they leave as pass-through frames.
    ``avatar_loop``: ``"loop"`` (frame i uses avatar frame i mod N, as ``infer``) or ``"pingpong"``
    (forwards then backwards, no jump at the end of the clip).
    ``encoder_cache``: avatar mode with a SplitEngine reuses the avatar's face-encoder features.
    ``detail``: with ``blend="feather"``, how much of the frame's own fine detail goes back where the
    generator kept the face as it was (``lipsync_rt.blend``; 0 shows the model's own pixels).
    ``rest_in_pauses``: with ``blend="feather"``, the lower face eases back to the picture as it is
    where the speech pauses (``rest.py``); False keeps the model's mouth on every frame.
    ``conceal_drops``: in live mode, a frame whose mouth is not ready in time holds the last generated
    mouth (or freezes briefly) instead of showing its original picture (``conceal.py``).
    ``max_wait_ms``: how long the session's own micro-batcher waits for more requests before running
    one: a single stream has nobody else to wait for, and its infer stage already batches whatever
    jobs are waiting, so 0, as for the batcher shared by the server's sessions (``MicroBatcher``'s default).
    ``source_audio``: released audio also carries the pushed audio as it came (its own rate and
    channels; ``OutputAudio.source``), for sinks that should give back what went in (``source_audio.py``).
    ``idle_transition``: for an avatar with an idle clip, how a change between the idle clip and the
    speaking frames is made: ``"nearest"`` (the new clip starts at its frame nearest to the picture
    it replaces) or ``"cut"`` (each clip shows the frame its own loop is at: a jump; for comparison).
    """

    fps: float = 25.0
    live: bool = True
    batch_size: int = 4
    blend: str = "feather"
    detail: float = 1.0
    rest_in_pauses: bool = True
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    overhead_ms: float | None = None
    max_overhead_ms: float | None = 200.0
    audio_grace_ms: float = 20.0
    audio_chunk: int = 320
    skip_silence: bool = True
    avatar_loop: str = "loop"
    encoder_cache: bool = True
    idle_transition: str = "nearest"
    keyframe_interval: int = 10
    queue_frames: int = 8
    max_wait_ms: float = 0.0
    source_audio: bool = False
    conceal_drops: bool = True

    def __post_init__(self) -> None:
        try:
            as_rate(self.fps)
        except ValueError as e:
            raise LipSyncError(str(e)) from None
        if self.batch_size < 1:
            raise LipSyncError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("overhead_ms", "max_overhead_ms", "audio_grace_ms", "max_wait_ms", "detail"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise LipSyncError(f"{name} must be a finite number >= 0, got {value}")
        if self.audio_chunk < 1:
            raise LipSyncError(f"audio_chunk must be >= 1 sample, got {self.audio_chunk}")
        if self.avatar_loop not in ("loop", "pingpong"):
            raise LipSyncError(f"avatar_loop must be 'loop' or 'pingpong', got {self.avatar_loop!r}")
        if self.idle_transition not in ("nearest", "cut"):
            raise LipSyncError(f"idle_transition must be 'nearest' or 'cut', got {self.idle_transition!r}")
        if self.queue_frames < 1:
            raise LipSyncError(f"queue_frames must be >= 1, got {self.queue_frames}")
        object.__setattr__(self, "pads", tuple(int(p) for p in self.pads))


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of a session's counters.

    ``frames_dropped``: frames whose lip-sync result was dropped (left a full queue, or was not ready
    at its release time); the original frame left in its place. ``frames_idle``: frames not generated
    because their audio was filled-in silence. ``engine_errors``: failed engine batches (their frames
    passed through). ``latency_ms``: release time minus ``capture_time`` of the newest input that drove
    the frame, over generated frames. ``overhead_ms``: per generated frame, the time from its mel
    window's last sample being due (T0 + t_i + L) to the frame being ready; D - L must exceed it.
    ``interrupts``: ``interrupt()`` calls. ``frames_held``: of the dropped frames, those shown with the
    last generated mouth held (or easing back to the original) instead of the original picture.
    ``silence_cuts``: stretches of silence shorter than 100 ms filled in between two pushes (audio that
    came too late, a click in the output): a producer that keeps real time gets none.
    ``delay``: D now, and ``delay_increases``: how often it grew with the load (``playout.py``).
    ``reached_ms`` (live): per generated frame, how long after its audio was due it reached each step
    (``audio in``: its mel window was cut, so its audio had arrived; ``engine start``; ``engine done``;
    ``ready``: pasted, the same figures as ``overhead_ms``); where the budget D - L goes.
    """

    frames_out: int
    frames_generated: int
    frames_dropped: int
    frames_idle: int
    engine_errors: int
    frames_without_face: int
    audio_samples_out: int
    silence_samples: int
    latency_ms: dict[str, float]
    overhead_ms: dict[str, float]
    delay: float
    lookahead: float
    interrupts: int = 0
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    frames_held: int = 0
    silence_cuts: int = 0
    reached_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    delay_increases: int = 0
