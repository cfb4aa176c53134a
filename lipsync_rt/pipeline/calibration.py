"""A live session's processing budget D - L, measured on its own engine before its clock starts.

The first engine call at a new batch size builds kernels (tens of ms on the CPU), which would make
the first frames of that size miss their release time, so every batch size is called once first.
Then the budget: the audio grace + 1.5 x the median of five one-frame calls (through the batcher, so
its deadline and thread hop are included) + 10 ms for crops and blending. Measured p99 overheads
stay well inside it (benchmarks/RESULTS.md).
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


async def measure_overhead(probe: Probe, audio_grace_ms: float) -> float:
    """D - L in seconds, from five timed one-frame calls."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        try:
            await probe(1)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            log.warning("engine warm-up failed: %s", e)
            return BROKEN_ENGINE_BUDGET
        times.append(time.perf_counter() - started)
    return audio_grace_ms / 1000 + 1.5 * float(np.median(times)) + 0.010
