"""Audio -> mouth: the rule that makes the corpus's lip sync exact by construction.

Video frame ``t`` (0-based, 25 fps) spans samples ``[640 t, 640 t + 640)`` of ``audio.wav``. Its raw
mouth is a function of those 640 samples alone:

- jaw opening = ``clip((rms_db - DB_CLOSED) / (DB_OPEN - DB_CLOSED), 0, 1) ** OPEN_GAMMA``, where
  ``rms_db`` is the RMS level of the 640 samples in dBFS: silence closes the mouth, loud voiced sound
  opens it wide;
- lip spread = the spectral centroid of the frame (Hann window, 100 Hz - 6 kHz) on a log scale: low
  (``oo``, ``o``) rounds and narrows the lips, high (``ee``, ``s``) spreads them; muted in silence.

The mouth drawn for frame t is then the raw mouth smoothed with the symmetric kernel ``SMOOTHING``
over frames t-1, t, t+1 (a real jaw cannot jump from shut to wide open in 40 ms). The kernel is
symmetric, so the mouth never leads or lags its sound: a burst in frame t's span opens frame t most
and its neighbours a little (a test checks this). Any model window that holds frames t-1..t+1's
audio, 120 ms around the frame, has everything that shaped frame t's mouth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from train import corpus_utils as cu

SAMPLE_RATE = cu.SAMPLE_RATE
SPF = cu.SAMPLES_PER_FRAME

DB_CLOSED = -45.0           # frame RMS (dBFS) at or below which the mouth is shut
DB_OPEN = -12.0             # ... at or above which it is fully open
OPEN_GAMMA = 1.3            # > 1: quiet consonants open the mouth only a little
CENTROID_MID_HZ = 900.0     # spectral centroid of a neutral lip shape
CENTROID_OCTAVES = 1.5      # octaves from neutral to fully rounded / fully spread
SPREAD_GATE_DB = 10.0       # spread fades in over this many dB above DB_CLOSED
SMOOTHING = (0.25, 0.5, 0.25)   # weights of frames t-1, t, t+1


@dataclass(frozen=True)
class MouthTrack:
    """Per-video-frame mouth controls, all [T]: ``opening`` in [0, 1], ``spread`` in [-1, 1]
    (-1 rounded, +1 spread), and the frame's RMS level in dBFS."""

    opening: np.ndarray
    spread: np.ndarray
    level_db: np.ndarray


def frame_audio(wav: np.ndarray, n_frames: Optional[int] = None) -> np.ndarray:
    """[T, 640]: row t is samples [640 t, 640 t + 640), the audio of video frame t (zero-padded)."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if n_frames is None:
        n_frames = -(-len(x) // SPF)
    out = np.zeros(n_frames * SPF)
    n = min(len(x), len(out))
    out[:n] = x[:n]
    return out.reshape(n_frames, SPF)


def _smooth(x: np.ndarray) -> np.ndarray:
    """The symmetric SMOOTHING kernel, with the edge frames repeated beyond the clip."""
    padded = np.concatenate((x[:1], x, x[-1:]))
    a, b, c = SMOOTHING
    return a * padded[:-2] + b * padded[1:-1] + c * padded[2:]


def mouth_track(wav: np.ndarray, n_frames: Optional[int] = None) -> MouthTrack:
    """The mouth the builder draws for each frame of 16 kHz audio (rule in the module docstring)."""
    frames = frame_audio(wav, n_frames)
    level_db = 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    opening = np.clip((level_db - DB_CLOSED) / (DB_OPEN - DB_CLOSED), 0.0, 1.0) ** OPEN_GAMMA
    power = np.abs(np.fft.rfft(frames * np.hanning(SPF), axis=1)) ** 2
    freqs = np.fft.rfftfreq(SPF, 1.0 / SAMPLE_RATE)
    band = (freqs >= 100.0) & (freqs <= 6000.0)
    energy = power[:, band].sum(axis=1)
    centroid = (power[:, band] * freqs[band]).sum(axis=1) / np.maximum(energy, 1e-20)
    centroid = np.where(energy > 1e-20, centroid, CENTROID_MID_HZ)
    spread = np.clip(np.log2(centroid / CENTROID_MID_HZ) / CENTROID_OCTAVES, -1.0, 1.0)
    gate = np.clip((level_db - DB_CLOSED) / SPREAD_GATE_DB, 0.0, 1.0)
    if len(opening) == 0:
        return MouthTrack(opening.astype(np.float32), spread.astype(np.float32), level_db.astype(np.float32))
    return MouthTrack(_smooth(opening).astype(np.float32), _smooth(spread * gate).astype(np.float32),
                      level_db.astype(np.float32))
