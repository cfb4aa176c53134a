"""SyncNet's audio features: the MFCCs of ``python_speech_features.mfcc`` with its defaults, in numpy.

SyncNet v2 (``syncnet_v2.model``) was trained on these features, so LSE-D and LSE-C are only comparable
with the published tables when every step matches (python_speech_features 0.6, the version the
syncnet_python recipe installs):

- the input is the 16 kHz mono track *as int16 numbers* (``scipy.io.wavfile.read`` of the pcm_s16le wav
  that ffmpeg extracts), not floats in [-1, 1]: the scale moves coefficient 0, the log energy;
- pre-emphasis 0.97 (the first sample kept as it is);
- frames of 400 samples (25 ms) every 160 (10 ms), starting at sample 0, no centring; the last frame
  is zero-padded, so N samples give ``1 + ceil((N - 400) / 160)`` frames (1 when N <= 400);
- no window (a rectangular one), a 512-point real FFT, power spectrum ``|X|^2 / 512``;
- 26 triangular mel filters from 0 to 8 kHz on the bins ``floor(513 * hz / 16000)`` (HTK mel scale,
  unnormalised triangles), zero energies replaced by float64's eps before the log;
- an orthonormal DCT-II of the 26 log energies, the first 13 kept, a sine lifter with L = 22;
- coefficient 0 replaced by the log of the frame's total power (the sum of the power spectrum).

The result is ``[frames, 13]``, 100 frames per second: 4 per video frame at 25 fps, and SyncNet reads
20 of them (0.2 s, 5 video frames) per window. ``tests/test_eval_mfcc.py`` checks hand-computed values
and, where python_speech_features is installed, equality with it.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
FRAME_LEN = 400          # round_half_up(0.025 * 16000)
FRAME_STEP = 160         # round_half_up(0.01 * 16000)
NFFT = 512
NFILT = 26
NUMCEP = 13
PREEMPH = 0.97
CEPLIFTER = 22
PER_SECOND = SAMPLE_RATE // FRAME_STEP      # 100 MFCC frames per second
_EPS = np.finfo(float).eps
_BLOCK = 4096            # frames per FFT batch: bounds memory on long files

__all__ = ["mfcc", "pcm16", "frame_count", "filterbank", "dct_matrix", "PER_SECOND"]


def pcm16(wav: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the int16 numbers a pcm_s16le wav holds, as float64.

    ffmpeg converts float to s16 by rounding ``x * 32768`` and clipping; the reference MFCCs are
    computed on those integers.
    """
    x = np.asarray(wav, dtype=np.float64)
    return np.clip(np.rint(x * 32768.0), -32768, 32767)


def frame_count(samples: int) -> int:
    """How many MFCC frames ``samples`` samples give (python_speech_features' framesig rule)."""
    if samples <= FRAME_LEN:
        return 1
    return 1 + int(math.ceil((samples - FRAME_LEN) / FRAME_STEP))


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


_cache: dict[str, np.ndarray] = {}


def filterbank() -> np.ndarray:
    """The ``[26, 257]`` triangular mel filters on FFT bins, built as python_speech_features builds them."""
    if "fb" not in _cache:
        points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), NFILT + 2)
        bins = np.floor((NFFT + 1) * _mel_to_hz(points) / SAMPLE_RATE)
        fb = np.zeros((NFILT, NFFT // 2 + 1))
        k = np.arange(NFFT // 2 + 1, dtype=np.float64)
        for j in range(NFILT):
            lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
            rising = (k >= lo) & (k < mid)
            falling = (k >= mid) & (k < hi)
            fb[j, rising] = (k[rising] - lo) / (mid - lo)
            fb[j, falling] = (hi - k[falling]) / (hi - mid)
        _cache["fb"] = fb
    return _cache["fb"]


def dct_matrix(n: int = NFILT, keep: int = NUMCEP) -> np.ndarray:
    """``[keep, n]``: the orthonormal DCT-II (scipy's ``dct(type=2, norm='ortho')``), first ``keep`` rows."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def _lifter() -> np.ndarray:
    n = np.arange(NUMCEP)
    return 1.0 + (CEPLIFTER / 2.0) * np.sin(np.pi * n / CEPLIFTER)


def mfcc(signal: np.ndarray) -> np.ndarray:
    """``[frames, 13]`` float64 MFCCs of a 16 kHz mono signal given in int16 units (see :func:`pcm16`)."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mfcc needs a non-empty 1-D signal, got shape {x.shape}")
    emphasised = np.empty_like(x)
    emphasised[0] = x[0]
    emphasised[1:] = x[1:] - PREEMPH * x[:-1]
    n = frame_count(x.size)
    padded = np.zeros((n - 1) * FRAME_STEP + FRAME_LEN)
    padded[: x.size] = emphasised
    frames = np.lib.stride_tricks.sliding_window_view(padded, FRAME_LEN)[::FRAME_STEP]
    fb, dct, lift = filterbank(), dct_matrix(), _lifter()
    out = np.empty((n, NUMCEP))
    for a in range(0, n, _BLOCK):
        pspec = np.abs(np.fft.rfft(frames[a:a + _BLOCK], NFFT, axis=1)) ** 2 / NFFT
        energy = pspec.sum(axis=1)
        energy = np.where(energy == 0, _EPS, energy)
        feat = pspec @ fb.T
        feat = np.where(feat == 0, _EPS, feat)
        cep = (np.log(feat) @ dct.T) * lift
        cep[:, 0] = np.log(energy)
        out[a:a + _BLOCK] = cep
    return out
