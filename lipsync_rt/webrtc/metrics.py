"""Server metrics in the Prometheus text format (version 0.0.4), with no client library.

Totals survive the sessions they count; per-session figures (fps) are labelled by the session's short
id and disappear when it ends, so the number of series stays bounded by ``--max-sessions``.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class RateMeter:
    """Events per second over a sliding window (frames sent, for fps)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(now - self._times[0], 1e-6)


@dataclass
class ServerMetrics:
    """Counters the server updates as sessions come and go; :func:`render` turns them into text."""

    sessions_started: int = 0
    sessions_ended: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)  # reason -> count
    frames_sent: int = 0
    frames_generated: int = 0
    audio_frames_sent: int = 0
    input_frames_dropped: int = 0  # incoming camera frames overtaken by newer ones
    pipeline_frames_dropped_closed: int = 0  # pipeline drops of sessions that have ended
    engine_errors_closed: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        self.latencies.append(seconds)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Optional[dict]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Optional[dict] = None) -> None:
        if isinstance(value, float) and not np.isfinite(value):
            text = "NaN" if np.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        else:
            text = repr(float(value)) if isinstance(value, float) else str(int(value))
        self.lines.append(f"lipsync_rt_{name}{_labels(labels)} {text}")

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[float, Optional[dict]]]) -> None:
        self.family(f"lipsync_rt_{name}", kind, help_text)
        for value, labels in samples:
            self.sample(name, value, labels)


def render(
    metrics: ServerMetrics,
    *,
    active: int,
    max_sessions: int,
    session_fps: dict[str, float],
    pipeline_drops_active: int,
    engine_errors_active: int,
    batch_sizes: Optional[dict[int, int]] = None,
    engine_batches: int = 0,
    engine_frames: int = 0,
) -> str:
    """The whole exposition, one family per figure; ``batch_sizes`` is the batcher's size histogram."""
    out = _Text()
    out.metric("sessions", "gauge", "WebRTC sessions now open.", [(active, None)])
    out.metric("sessions_max", "gauge", "Most sessions served at once (--max-sessions).", [(max_sessions, None)])
    out.metric("sessions_started_total", "counter", "Sessions started.", [(metrics.sessions_started, None)])
    out.metric("sessions_ended_total", "counter", "Sessions ended and cleaned up.", [(metrics.sessions_ended, None)])
    reasons = sorted(set(metrics.rejected) | {"busy", "unauthorized", "bad_request", "too_large"})
    out.metric("offers_rejected_total", "counter", "Offers refused, by reason.",
               [(metrics.rejected.get(r, 0), {"reason": r}) for r in reasons])
    out.metric("session_fps", "gauge", "Video frames sent per second over the last 2 s, per open session.",
               [(round(fps, 3), {"session": sid}) for sid, fps in sorted(session_fps.items())])
    out.metric("frames_sent_total", "counter", "Video frames sent to peers.", [(metrics.frames_sent, None)])
    out.metric("frames_generated_total", "counter", "Video frames sent with a generated (lip-synced) face.",
               [(metrics.frames_generated, None)])
    out.metric("audio_frames_sent_total", "counter", "20 ms audio frames sent to peers.",
               [(metrics.audio_frames_sent, None)])
    out.metric("frames_dropped_total", "counter", "Video frames dropped: input (camera frames overtaken by "
               "newer ones) and pipeline (live session behind).",
               [(metrics.input_frames_dropped, {"stage": "input"}),
                (metrics.pipeline_frames_dropped_closed + pipeline_drops_active, {"stage": "pipeline"})])
    out.metric("engine_errors_total", "counter", "Frames the engine failed on (passed through).",
               [(metrics.engine_errors_closed + engine_errors_active, None)])
    lat = np.asarray(metrics.latencies, dtype=np.float64)
    quantiles = [(float(np.quantile(lat, q)) if lat.size else float("nan"), {"quantile": str(q)})
                 for q in (0.5, 0.95, 0.99)]
    out.family("lipsync_rt_latency_seconds", "summary",
               "End-to-end latency: newest input that drove a frame to the frame's send (last 4096 frames).")
    for value, labels in quantiles:
        out.sample("latency_seconds", value, labels)
    out.sample("latency_seconds_sum", metrics.latency_sum)
    out.sample("latency_seconds_count", metrics.latency_count)
    sizes = batch_sizes or {}
    out.family("lipsync_rt_engine_batch_size", "histogram", "Frames per engine call of the shared micro-batcher.")
    for bound in BATCH_BUCKETS:
        out.sample("engine_batch_size_bucket", sum(c for s, c in sizes.items() if s <= bound), {"le": str(bound)})
    out.sample("engine_batch_size_bucket", sum(sizes.values()), {"le": "+Inf"})
    out.sample("engine_batch_size_sum", sum(s * c for s, c in sizes.items()))
    out.sample("engine_batch_size_count", sum(sizes.values()))
    out.metric("engine_batches_total", "counter", "Engine calls.", [(engine_batches, None)])
    out.metric("engine_frames_total", "counter", "Frames through the engine.", [(engine_frames, None)])
    return "\n".join(out.lines) + "\n"
