"""Numeric command-line options, checked when they are parsed, each against the range it really has.

An option value outside its range (``--fps 0``, ``--fps inf``, ``--fps 1e12``, a batch of a billion
frames, a port of 70000) is a usage error with one line that says the range, before anything is
loaded, rather than a traceback minutes later. argparse turns the ``ArgumentTypeError`` raised here
into ``lipsync-rt COMMAND: error: argument --fps: ...`` and exit code 2.

The ranges are the ones the program works in, not mere sanity: frame rates from 1 to 240 (a frame
needs at least one mel column per 80th of a second, and live pacing has a 10 ms clock), batches up to
4096 frames, pads and crops within 100 000 pixels.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

FPS_RANGE = (1.0, 240.0)
BATCH_RANGE = (1, 4096)
PIXELS = 100_000


def number(low: Optional[float] = None, high: Optional[float] = None, *, integer: bool = False,
           above: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type``: a finite number (an integer with ``integer``) from ``low`` to ``high``;
    ``above`` makes ``low`` itself excluded (``> low``)."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if integer else 'a number'}, got {text!r}") \
                from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)) \
                or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {_describe(low, high, integer, above, unit)}, got {text!r}")
        return value

    parse.__name__ = "integer" if integer else "number"   # argparse names the type in some messages
    return parse


def _describe(low, high, integer: bool, above: bool, unit: str) -> str:
    kind = "an integer" if integer else "a number"
    unit = f" {unit}" if unit else ""
    fmt = lambda v: f"{v:g}" if not integer else str(int(v))   # noqa: E731
    if low is not None and high is not None:
        return f"{kind} from {fmt(low)} to {fmt(high)}{unit}" if not above else \
            f"{kind} above {fmt(low)} and at most {fmt(high)}{unit}"
    if low is not None:
        return f"{kind} {'above' if above else 'of at least'} {fmt(low)}{unit}"
    return f"{kind} of at most {fmt(high)}{unit}"


#: frames per second, for every command that takes ``--fps``
fps = number(*FPS_RANGE, unit="frames per second")
#: frames per engine batch
batch = number(*BATCH_RANGE, integer=True)
#: pixels added to or taken from a box (``--pads``, ``--crop``, ``--box``)
pixels = number(-PIXELS, PIXELS, integer=True)
#: a processing budget in milliseconds (``--overhead_ms``)
milliseconds = number(0, 10_000, unit="ms")
#: a duration in seconds (``--duration``, ``--seconds``): above 0, at most a week
seconds = number(0, 7 * 24 * 3600, above=True, unit="s")
#: a TCP port (0: any free one)
port = number(0, 65535, integer=True)
