"""Frame rates as exact fractions, so frame times never drift (PyAV's habit: explicit time bases).

A float frame rate such as 29.97 is really 30000/1001; frame i of a 10-minute clip computed as
``i / 29.97`` drifts from the container's timestamps, while ``i * Fraction(1001, 30000)`` does not.
Every module that turns a frame rate into a time base goes through :func:`as_rate`.
"""

from __future__ import annotations

from fractions import Fraction


def as_rate(fps: float | Fraction) -> Fraction:
    """29.97 -> 30000/1001, 25.0 -> 25; a Fraction is kept as it is. Raises ValueError unless > 0."""
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return rate
