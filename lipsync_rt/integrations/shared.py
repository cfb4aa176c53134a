"""What both adapters need and neither framework provides: one engine per process, and each reply's
audio as it was pushed.

:func:`shared_engine` gives every pipeline of a process the same :class:`MicroBatcher` (one model in
memory, batches across sessions), the way ``lipsync-rt serve`` shares one among its peers.

:class:`SegmentAudio` keeps the audio of each segment as the TTS sent it. The session works at 16 kHz
(the model's rate) and tells, on every released chunk, which segment it belongs to and how much of
that segment went before it (``OutputAudio.segment_position``); the adapters play the matching
stretch of the original instead, so a 24 or 48 kHz voice keeps its top octave while lips and sound
still leave together.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Hashable, Optional

import numpy as np

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.errors import LipSyncError

if TYPE_CHECKING:
    from lipsync_rt.engine import MicroBatcher
    from lipsync_rt.pipeline import OutputAudio

_engines: dict[tuple, "MicroBatcher"] = {}
_lock = threading.Lock()


def shared_engine(kind: str = "auto", checkpoint: Optional[str] = None, *, device: str = "auto",
                  max_batch: int = 16) -> "MicroBatcher":
    """The process's engine for ``(kind, checkpoint, device)``, behind one MicroBatcher, made once.

    Sessions given a MicroBatcher share it and never close it; it lives as long as the process.
    """
    key = (kind, checkpoint, device, max_batch)
    with _lock:
        if key not in _engines:
            from lipsync_rt.engine import MicroBatcher
            from lipsync_rt.engine.factory import create_engine

            _engines[key] = MicroBatcher(create_engine(kind, checkpoint, device=device), max_batch=max_batch)
        return _engines[key]


def pcm_from_bytes(audio: bytes, sample_rate: int, channels: int) -> np.ndarray:
    """Interleaved int16 bytes -> ``(n,)`` or ``(n, channels)`` int16; a clear error for anything else."""
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise LipSyncError(f"audio sample rate must be a positive integer, got {sample_rate!r}")
    if int(channels) != channels or channels < 1:
        raise LipSyncError(f"audio must have at least one channel, got {channels!r}")
    if len(audio) % (2 * channels):
        raise LipSyncError(f"audio of {len(audio)} bytes is not whole int16 samples of {channels} channel(s)")
    pcm = np.frombuffer(audio, dtype="<i2")
    return pcm if channels == 1 else pcm.reshape(-1, channels)


class _Stream:
    """One segment's audio: mono int16 at ``rate``, from sample ``base`` on (what was taken is let go)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.parts: deque[np.ndarray] = deque()
        self.size = 0
        self.base = 0
        self.resampler = None
        self.resampler_rate: Optional[int] = None


class SegmentAudio:
    """The pushed audio of each segment, mono int16, at ``rate`` (None: each segment at the rate its
    first audio came at). Pushes in another rate are resampled (streaming, per segment)."""

    def __init__(self, rate: Optional[int] = None) -> None:
        self.rate = rate
        self._streams: dict[Hashable, _Stream] = {}

    def push(self, segment: Hashable, pcm: np.ndarray, rate: int) -> None:
        stream = self._streams.get(segment)
        if stream is None:
            stream = self._streams[segment] = _Stream(self.rate or int(rate))
        mono = _mono_int16(pcm)
        if int(rate) != stream.rate:
            mono = self._resample(stream, mono, int(rate))
        if mono.size:
            stream.parts.append(mono)
            stream.size += mono.size

    def end(self, segment: Hashable) -> None:
        """The segment has no more audio: what a resampler still holds is added."""
        stream = self._streams.get(segment)
        if stream is not None and stream.resampler is not None:
            tail = _collect(stream.resampler.resample(None))
            stream.resampler = None
            if tail.size:
                stream.parts.append(tail)
                stream.size += tail.size

    def take(self, chunk: "OutputAudio") -> Optional[tuple[np.ndarray, int]]:
        """The original audio of ``chunk`` (a released chunk of a segment): ``(int16 mono, rate)``, as
        long as the chunk; None for a chunk of no segment, or of one never pushed here."""
        stream = self._streams.get(chunk.segment) if chunk.segment is not None else None
        if stream is None:
            return None
        r = stream.rate
        start = round(chunk.segment_position * r / SAMPLE_RATE)
        stop = round((chunk.segment_position + chunk.samples.size) * r / SAMPLE_RATE)
        self._drop_before(stream, start)
        out = np.zeros(stop - start, np.int16)
        pos = stream.base
        for part in stream.parts:
            a, b = max(pos, start), min(pos + part.size, stop)
            if a < b:
                out[a - start:b - start] = part[a - pos:b - pos]
            pos += part.size
            if pos >= stop:
                break
        return out, r

    def forget(self, segment: Hashable) -> None:
        self._streams.pop(segment, None)

    def __contains__(self, segment: Hashable) -> bool:
        return segment in self._streams

    @staticmethod
    def _drop_before(stream: _Stream, position: int) -> None:
        while stream.parts and stream.base + stream.parts[0].size <= position:
            stream.base += stream.parts.popleft().size

    @staticmethod
    def _resample(stream: _Stream, mono: np.ndarray, rate: int) -> np.ndarray:
        import av

        if stream.resampler is None or stream.resampler_rate != rate:
            stream.resampler = av.AudioResampler(format="s16", layout="mono", rate=stream.rate)
            stream.resampler_rate = rate
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        return _collect(stream.resampler.resample(frame))


def _mono_int16(pcm: np.ndarray) -> np.ndarray:
    """int16 (or float in [-1, 1]) ``(n,)`` or ``(n, channels)`` -> int16 ``(n,)``, channels averaged."""
    x = np.asarray(pcm)
    if x.dtype.kind == "f":
        x = np.clip(x, -1.0, 1.0) * 32767.0
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.round(x).astype(np.int16) if x.dtype.kind == "f" else x.astype(np.int16)


def _collect(frames) -> np.ndarray:
    parts = [f.to_ndarray().reshape(-1) for f in frames]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
