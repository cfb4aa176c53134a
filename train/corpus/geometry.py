"""Small geometry helpers of the corpus builder, and the face-mesh indices it reads.

Indices are MediaPipe's 468-point face-mesh topology (the mesh ``lipsync_rt.face`` computes).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from train import corpus_utils as cu

# Lip contours, corner to corner (left to right on an unmirrored face).
OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYES = ((33, 133), (362, 263))
CHIN = 152
CHEEKS = (50, 280)
NOSE_TIP = 1


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to [N, 2] points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def similarity(centre_from: Sequence[float], centre_to: Sequence[float], angle_deg: float,
               sx: float, sy: float, flip: bool = False) -> np.ndarray:
    """Move ``centre_from`` to ``centre_to``, rotating by ``angle_deg`` (counter-clockwise on screen)
    and scaling by (sx, sy) about it, optionally mirroring left-right first."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, s], [-s, c]])                     # y points down: CCW on screen
    lin = rot @ np.diag([sx * (-1.0 if flip else 1.0), sy])
    t = np.asarray(centre_to, float) - lin @ np.asarray(centre_from, float)
    return np.hstack([lin, t[:, None]])


def walk(n: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random walk: three sinusoids at 0.05-0.7 Hz with random phases, peak ~amplitude."""
    t = np.arange(n) / cu.FPS
    out = np.zeros(n)
    for _ in range(3):
        f = rng.uniform(0.05, 0.7)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out * (amplitude / 2.0)

