"""The pushed audio as it came, at its own rate and with its channels, beside the 16 kHz timeline.

The model hears 16 kHz mono, and the timeline (``timeline.py``) holds exactly that; but whoever listens
to the result (an mp4, a browser) should get what was pushed: 48 kHz stereo from a microphone stays
48 kHz stereo. With ``SessionConfig(source_audio=True)`` the session keeps the pushed samples here and
every released :class:`~lipsync_rt.pipeline.OutputAudio` carries the matching stretch of them
(``source``, at ``source_rate``), silence where the timeline has filled-in silence.

How the two line up. The audio stage resamples each run of pushes (one resampler's life: a segment, a
stretch at one rate) to 16 kHz; sample k of a run's 16 kHz output has the media time of source sample
``k * rate / 16000`` of the same run (FFmpeg's resampler keeps time; it only holds back a short
filter tail until the run ends). So the stage tells this ledger, for every stretch of pushed audio it
writes on the timeline, which run it belongs to and how far into the run it is; reading a released
stretch maps it back. Rounding is done on absolute positions, so chunk lengths add up exactly to the
timeline's length at the source rate.

The source format (rate, channels) is fixed by the first push; a later push at another rate is
resampled to it, one with other channels is mixed to them.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import Optional

import numpy as np

from lipsync_rt.audio import SAMPLE_RATE


class SourceAudio:
    """The ledger: pushed samples (``rate``, ``channels``) and where they lie on the 16 kHz timeline."""

    def __init__(self) -> None:
        self.rate: Optional[int] = None
        self.channels: Optional[int] = None
        self._parts: deque[np.ndarray] = deque()      # source samples from absolute index _base on
        self._base = 0
        self._end = 0                                  # source samples appended so far
        # [timeline start, timeline stop, the run's first source sample, the run's 16 kHz samples before start]
        self._map: deque[list[int]] = deque()
        self._run: Optional[list[int]] = None          # [first source sample, 16 kHz samples written]
        self._resampler = None
        self._resampler_rate: Optional[int] = None

    # -- the audio stage

    def start_run(self) -> None:
        """A new 16 kHz resampler starts: its output lines up with the source from here on."""
        self._flush_resampler()
        self._run = [self._end, 0]

    def append(self, samples: np.ndarray, rate: int) -> None:
        """Pushed samples (float32 ``(n,)`` or ``(n, channels)``) at ``rate``, as they came."""
        x = np.asarray(samples, np.float32)
        x = x[:, None] if x.ndim == 1 else x
        if self.rate is None:
            self.rate, self.channels = int(rate), int(x.shape[1])
        if x.shape[1] != self.channels:
            x = np.repeat(x.mean(axis=1, keepdims=True), self.channels, axis=1)
        if int(rate) != self.rate:
            x = self._resample(x, int(rate))
        elif self._resampler is not None:
            self._flush_resampler()
        if x.shape[0]:
            self._parts.append(np.ascontiguousarray(x))
            self._end += x.shape[0]

    def wrote(self, start: int, stop: int) -> None:
        """The audio stage wrote 16 kHz samples [start, stop) of the current run on the timeline."""
        if self._run is None or stop <= start:
            return
        first, done = self._run
        last = self._map[-1] if self._map else None
        if last is not None and last[1] == start and last[2] == first and last[3] + (last[1] - last[0]) == done:
            last[1] = stop
        else:
            self._map.append([start, stop, first, done])
        self._run[1] = done + (stop - start)

    # -- the timeline (cut and release)

    def cut(self, position: int) -> None:
        """The timeline from ``position`` on is gone (an interrupt); the next push starts a new run."""
        while self._map and self._map[-1][0] >= position:
            self._map.pop()
        if self._map and self._map[-1][1] > position:
            self._map[-1][1] = position
        self._run = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """The source samples for timeline [start, stop): ``(m, channels)`` float32, m being the stretch's
        length at the source rate (zeros where the timeline has silence)."""
        rate, channels = self.rate or SAMPLE_RATE, self.channels or 1
        at = lambda position: _scaled(position, rate)   # noqa: E731 - absolute position at the source rate
        out = np.zeros((at(stop) - at(start), channels), np.float32)
        base = at(start)
        for a, b, first, done in self._map:
            lo, hi = max(a, start), min(b, stop)
            if lo >= hi:
                if a >= stop:
                    break
                continue
            n = at(hi) - at(lo)
            src = first + _scaled(done + lo - a, rate)
            out[at(lo) - base:at(lo) - base + n] = self._slice(src, n)
        return out

    def discard_before(self, position: int) -> None:
        """Timeline samples before ``position`` have been released: their source is let go."""
        while self._map and self._map[0][1] <= position:
            self._map.popleft()
        keep = self._end
        if self._map:
            a, _, first, done = self._map[0]
            keep = first + _scaled(done + max(0, position - a), self.rate or SAMPLE_RATE) - 1
        elif self._run is not None:
            keep = self._run[0] + _scaled(self._run[1], self.rate or SAMPLE_RATE) - 1
        while self._parts and self._base + self._parts[0].shape[0] <= keep:
            self._base += self._parts.popleft().shape[0]

    # -- inside

    def _slice(self, start: int, n: int) -> np.ndarray:
        """Source samples [start, start + n); what was never appended (or was let go) reads as silence."""
        out = np.zeros((n, self.channels or 1), np.float32)
        pos = self._base
        for part in self._parts:
            a, b = max(pos, start), min(pos + part.shape[0], start + n)
            if a < b:
                out[a - start:b - start] = part[a - pos:b - pos]
            pos += part.shape[0]
            if pos >= start + n:
                break
        return out

    def _resample(self, x: np.ndarray, rate: int) -> np.ndarray:
        import av

        if self._resampler is None or self._resampler_rate != rate:
            self._flush_resampler()
            self._resampler = av.AudioResampler(format="flt", layout=_layout(self.channels), rate=self.rate)
            self._resampler_rate = rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x).reshape(1, -1), format="flt",
                                           layout=_layout(self.channels))
        frame.sample_rate = rate
        return self._collect(self._resampler.resample(frame))

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            tail = self._collect(self._resampler.resample(None))
            self._resampler = None
            if tail.shape[0]:
                self._parts.append(tail)
                self._end += tail.shape[0]

    def _collect(self, frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1, self.channels) for f in frames]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, self.channels), np.float32)


def _scaled(position: int, rate: int) -> int:
    """A count of 16 kHz samples as a count at ``rate``, rounded the same way everywhere."""
    return int(round(Fraction(int(position) * int(rate), SAMPLE_RATE)))


def _layout(channels: int) -> str:
    """An FFmpeg layout with ``channels`` channels, for resampling only (no mixing happens)."""
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
