"""A live session's delay D follows its load: it grows, in a pause of the speech, when frames come
ready too close to their release time.

D = L + a processing budget measured when the session starts (``calibration.py``). The load a
session meets changes after that: on a server, a session that started alone measured an idle
machine, and when two more join, its frames come ready later than that budget allowed. Those frames
leave without their mouth (drops). This controller watches how long after its audio was due each
frame became ready (its *overhead*; a frame given up as late counts with its overhead at that
moment) and asks for a budget that holds all but the two slowest of the recent ones, with headroom.

The session applies a bigger budget only where nobody can tell: in a pause, where the audio about to
leave is silence and the face is at rest (``ReleaseStage.quiet_from``), the release clock moves back
by the difference; the picture holds a little longer and the pause lasts that much longer. What has
left is never retimed, and timestamps stay media time (a recording has no gap). D never shrinks,
which would cut audio, and never grows past ``SessionConfig.max_overhead_ms``.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Optional

#: frames whose overheads are kept: 4 s at 25 fps
WINDOW = 100
#: the overhead the budget must hold: the RANK-th slowest of the recent frames, so that one stray frame
#: (concealed, ``conceal.py``) does not raise D for good, while a burst of late frames does
RANK = 3
#: the budget asked for is that overhead times this, plus ``MARGIN``
HEADROOM = 1.25
MARGIN = 0.005
#: smaller increases than this wait (a pause is not spent on a few milliseconds)
MIN_STEP = 0.010


class PlayoutDelay:
    """The processing budget D - L (seconds) of one live session, and the budget it should have."""

    def __init__(self, budget: float, cap: float) -> None:
        self.budget = float(budget)
        self.cap = max(float(cap), self.budget)
        self.increases = 0
        self._recent: deque[float] = deque(maxlen=WINDOW)

    def observe(self, overhead: float) -> None:
        """A frame became ready (or was given up) ``overhead`` seconds after its audio was due."""
        self._recent.append(overhead)

    def wanted(self) -> Optional[float]:
        """The budget to grow to, or None while the present one holds."""
        if len(self._recent) < RANK:
            return None
        want = min(self.cap, HEADROOM * heapq.nlargest(RANK, self._recent)[-1] + MARGIN)
        return want if want >= self.budget + MIN_STEP else None

    def grow(self, budget: float) -> float:
        """Take ``budget`` (from :meth:`wanted`) as the budget now; returns the increase."""
        increase = budget - self.budget
        self.budget = budget
        self.increases += 1
        return increase
