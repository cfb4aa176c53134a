"""Pushed PCM in any shape, type and rate -> float32 mono 16 kHz, chunk by chunk.

Resampling uses FFmpeg's swresample through PyAV (the same library ``audio.load_audio`` decodes
files with), keeping its filter state between chunks, so a stream pushed in pieces resamples as one
signal. 16 kHz input is passed through untouched, which is what makes offline sessions bit-identical
to ``infer``.
"""

from __future__ import annotations

from fractions import Fraction
import numpy as np

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.errors import LipSyncError


def to_mono_float(pcm: np.ndarray) -> np.ndarray:
    """``(n,)`` or ``(n, channels)`` int16/int32/float PCM -> float32 ``(n,)`` in [-1, 1] (channel mean)."""
    x = np.asarray(pcm)
    if x.ndim not in (1, 2):
        raise LipSyncError(f"audio must be mono (n,) or (n, channels), got shape {x.shape}")
    if x.dtype.kind in "iu":
        x = _scale_int(x.astype(np.float64), x.dtype)
    elif x.dtype.kind != "f":
        raise LipSyncError(f"audio must be int16, int32 or float samples, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x.astype(np.float32, copy=False)


def to_float(pcm: np.ndarray) -> np.ndarray:
    """Like :func:`to_mono_float`, but the channels are kept: float32 ``(n,)`` or ``(n, channels)``."""
    x = np.asarray(pcm)
    if x.dtype.kind in "iu":
        return _scale_int(x.astype(np.float64), x.dtype).astype(np.float32)
    return x.astype(np.float32, copy=True)


def _scale_int(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.int16:
        return x / 32768.0
    if dtype == np.int32:
        return x / 2147483648.0
    if dtype == np.uint8:
        return (x - 128.0) / 128.0
    raise LipSyncError(f"unsupported integer PCM type {dtype}; use int16, int32 or float32")


class Resampler:
    """Streaming resampler from one input rate to 16 kHz mono float32."""

    def __init__(self, rate: int) -> None:
        if int(rate) != rate or rate <= 0:
            raise LipSyncError(f"sample_rate must be a positive integer, got {rate}")
        self.rate = int(rate)
        self._pts = 0
        self._out = 0               # 16 kHz samples handed out
        self._swr = None
        if self.rate != SAMPLE_RATE:
            import av

            self._swr = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self._swr is None or samples.size == 0:
            return samples
        import av

        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32).reshape(1, -1),
                                           format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts, frame.time_base = self._pts, Fraction(1, self.rate)
        self._pts += samples.size
        return self._collect(self._swr.resample(frame))

    def flush(self) -> np.ndarray:
        """The filter's held-back tail, at the end of the stream."""
        if self._swr is None:
            return np.zeros(0, np.float32)
        return self._collect(self._swr.resample(None))

    @property
    def held(self) -> int:
        """16 kHz samples of what was pushed that the filter still holds back (a few, at any rate but 16 kHz):
        audio that has arrived and is not late, though not on the timeline yet."""
        if self._swr is None:
            return 0
        return max(0, round(self._pts * SAMPLE_RATE / self.rate) - self._out)

    def out_samples(self, n: int) -> int:
        """How many 16 kHz samples ``n`` samples at this rate stand for."""
        return round(n * SAMPLE_RATE / self.rate)

    def _collect(self, frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        out = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
        self._out += out.size
        return out
