"""What a session counts and times, and the percentiles it reports them as.

One :class:`SessionMetrics` per session: the stages add to it as frames pass (all on the event loop,
so plain counters suffice) and :meth:`SessionMetrics.snapshot` turns it into a
:class:`~lipsync_rt.pipeline.SessionStats`. The benchmarks use the same :func:`percentiles`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterable, Optional, Sequence

import numpy as np

from .config import SessionStats
from .messages import DROPPED, IDLE, NO_FACE, FrameResult
from .queues import StreamEnd

STAGES = ("track", "prepare", "infer", "blend")
#: the steps a generated frame reaches, timed from its audio being due (see ``SessionStats.reached_ms``)
MILESTONES = ("audio in", "engine start", "engine done", "ready")
_KEEP = 100_000     # most recent figures kept per series


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}``; NaN for an empty series, so a missing figure is visible."""
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(np.percentile(data, q)) for q in qs}


class SessionMetrics:
    """Counters, latencies (ms) and per-stage times (ms) of one session."""

    def __init__(self) -> None:
        self.frames_out = self.frames_generated = self.frames_dropped = self.frames_idle = 0
        self.engine_errors = self.frames_without_face = self.audio_samples_out = 0
        self.interrupts = 0
        self.frames_held = 0
        self.silence_cuts = 0
        self.latency_ms: deque[float] = deque(maxlen=_KEEP)
        self.overhead_ms: deque[float] = deque(maxlen=_KEEP)
        self.stage_ms: dict[str, deque[float]] = {k: deque(maxlen=_KEEP) for k in STAGES}
        self.reached_ms: dict[str, deque[float]] = {k: deque(maxlen=_KEEP) for k in MILESTONES}

    def restart_timings(self) -> None:
        """Forget the latencies and times so far (a benchmark's warm-up); the counters stay."""
        for series in (self.latency_ms, self.overhead_ms, *self.stage_ms.values(), *self.reached_ms.values()):
            series.clear()

    def record(self, stage: str, started: float) -> None:
        """Time since ``started`` (a ``time.perf_counter()``) as one figure of ``stage``."""
        self.stage_ms[stage].append((time.perf_counter() - started) * 1000)

    def reached(self, milestone: str, after_due_s: Optional[float]) -> None:
        """A frame reached ``milestone`` ``after_due_s`` after its audio was due (live only; None offline)."""
        if after_due_s is not None:
            self.reached_ms[milestone].append(after_due_s * 1000)

    def ready(self, overhead_s: Optional[float]) -> None:
        """A generated frame is ready ``overhead_s`` after its audio was due (live only; None offline)."""
        self.reached("ready", overhead_s)
        if overhead_s is not None:
            self.overhead_ms.append(overhead_s * 1000)

    def released(self, result: FrameResult, now: float) -> None:
        """A frame left the session."""
        if result.reason == DROPPED:
            self.frames_dropped += 1
            self.frames_held += result.held
        elif result.reason == IDLE:
            self.frames_idle += 1
        elif result.reason == NO_FACE:
            self.frames_without_face += 1
        if result.generated:
            self.frames_generated += 1
            if result.capture_time is not None:
                self.latency_ms.append((now - result.capture_time) * 1000)
        self.frames_out += 1

    def output_dropped(self, item: object) -> None:
        """A released frame was pushed out of a full output queue (a consumer that does not keep up)."""
        if not isinstance(item, StreamEnd):
            self.frames_dropped += 1

    def snapshot(self, *, silence_samples: int, delay: float, lookahead: float, delay_increases: int = 0) -> SessionStats:
        return SessionStats(
            frames_out=self.frames_out, frames_generated=self.frames_generated,
            frames_dropped=self.frames_dropped, frames_idle=self.frames_idle,
            engine_errors=self.engine_errors, frames_without_face=self.frames_without_face,
            audio_samples_out=self.audio_samples_out, silence_samples=silence_samples,
            latency_ms=percentiles(self.latency_ms), overhead_ms=percentiles(self.overhead_ms),
            delay=delay, lookahead=lookahead, interrupts=self.interrupts, frames_held=self.frames_held,
            silence_cuts=self.silence_cuts,
            stage_ms={k: percentiles(v) for k, v in self.stage_ms.items()},
            reached_ms={k: percentiles(v) for k, v in self.reached_ms.items() if v},
            delay_increases=delay_increases,
        )
