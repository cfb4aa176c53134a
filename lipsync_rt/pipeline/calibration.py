"""A live session's processing budget D - L, measured on its own engine before its clock starts.

The first engine call at a new batch size builds kernels (tens of ms on the CPU), which would make
the first frames of that size miss their release time, so every batch size is called once first.

Then the budget, sized from the engine's tail, not its median: the audio grace + twice the 90th
percentile of twenty timed one-frame calls (through the batcher, so its thread hop is included) +
10 ms for crops, blending and a turn of the event loop. A frame's processing is about three such
steps in a row (inputs, engine, blend), each a thread hop that a busy machine can delay, and what
makes frames late is the tail: on the shared development VM single calls of a 4-10 ms median took
25-57 ms now and then, and the old budget (1.5 x the median of five calls) was under the measured p99
overhead. Twenty calls take a fraction of a second; the 90th percentile of them is the third slowest,
so one stray call does not set the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import numpy as np

log = logging.getLogger("lipsync_rt.pipeline.session")

#: ``probe(frames)``: one engine request of that many frames, the way the session makes them.
Probe = Callable[[int], Awaitable[None]]
BROKEN_ENGINE_BUDGET = 0.1     # seconds; a broken engine shows up per batch later, counted


async def warm_up(probe: Probe, batch_size: int) -> None:
    """Call the engine once at every batch size from 1 to ``batch_size``."""
    for frames in range(1, batch_size + 1):
        try:
            await probe(frames)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken engine shows up per batch later, counted
            log.warning("engine warm-up failed: %s", e)
            return


PROBES = 20


async def measure_overhead(probe: Probe, audio_grace_ms: float) -> float:
    """D - L in seconds, from ``PROBES`` timed one-frame calls (see the module doc)."""
    times = []
    for _ in range(PROBES):
        started = time.perf_counter()
        try:
            await probe(1)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            log.warning("engine warm-up failed: %s", e)
            return BROKEN_ENGINE_BUDGET
        times.append(time.perf_counter() - started)
    return audio_grace_ms / 1000 + 2.0 * float(np.percentile(times, 90)) + 0.010
