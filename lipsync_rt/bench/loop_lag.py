"""How late the event loop wakes a sleeping task: the longest any stage blocked it.

A live session does its heavy work in threads so that the loop, which paces every release, never
stalls for more than a few milliseconds; ``lipsync-rt bench pipeline`` checks that with this probe.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable, Optional


class LoopLagProbe:
    """Runs as its own task; ``lags_ms`` holds one figure per wake-up (most recent 100 000)."""

    def __init__(self, interval: float = 0.005, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.lags_ms: deque[float] = deque(maxlen=100_000)
        self._clock = clock
        self._task: Optional[asyncio.Task] = None

    def start(self) -> "LoopLagProbe":
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")
        return self

    async def _run(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self.interval)
            self.lags_ms.append(max(0.0, (self._clock() - before - self.interval) * 1000.0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
