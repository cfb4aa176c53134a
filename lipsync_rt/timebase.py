"""Frame rates as exact fractions, so frame times never drift (PyAV's habit: explicit time bases).

A float frame rate such as 29.97 is really 30000/1001; frame i of a 10-minute clip computed as
``i / 29.97`` drifts from the container's timestamps, while ``i * Fraction(1001, 30000)`` does not.
Every module that turns a frame rate into a time base goes through :func:`as_rate`.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .errors import RangeError

#: The largest frame rate anything here is asked to keep (frames need their own mel columns long before).
MAX_FPS = 1000


def as_rate(fps: float | Fraction) -> Fraction:
    """29.97 -> 30000/1001, 25.0 -> 25; a Fraction is kept as it is.

    Raises :class:`~lipsync_rt.errors.RangeError` (a ValueError) unless the rate is finite, above 0 as
    a fraction with a denominator of at most 1001 (1e-5 would round to 0) and at most ``MAX_FPS``.
    """
    if not isinstance(fps, Fraction) and not math.isfinite(float(fps)):
        raise RangeError(f"fps must be a finite number, got {fps}")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if not 0 < rate <= MAX_FPS:
        raise RangeError(f"fps must be above 0 (at least 1/1001) and at most {MAX_FPS}, got {fps}")
    return rate
