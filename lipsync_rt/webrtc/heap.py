"""Freed memory handed back to the system after sessions end, so a server's size follows its sessions.

A session allocates tens of megabytes in many small pieces (queued audio, frames, masks, codec
buffers) from several threads. When it ends they are freed, but glibc keeps freed memory in its
arenas: the process's RSS stays where the busiest moment left it, and it steps up each time a thread
of a new session is given an arena of its own (glibc makes up to eight per core), though nothing is
held (measured in benchmarks/RESULTS.md, "A server that runs for weeks"). Two things keep it flat:
``limit_arenas`` (called once by ``lipsync-rt serve``, before the engine) caps the arenas at one per
core, at least two, and ``HeapTrimmer`` returns the free pages with ``malloc_trim``, which walks every
arena, so it runs in a worker thread, a second after a session ends, once for a burst of them.
Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Callable, Optional

log = logging.getLogger(__name__)
M_ARENA_MAX = -8        # glibc's mallopt parameter (malloc.h)


def _glibc_function(name: str, argtypes: list) -> Optional[Callable[..., int]]:
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):   # not glibc (macOS, Windows, musl)
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


_MALLOC_TRIM = _glibc_function("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])


def limit_arenas(count: Optional[int] = None) -> bool:
    """Cap glibc's malloc arenas at ``count`` (default: one per core, at least two) for the threads
    made from now on; whether it was done. A process-wide setting: for a server's process, set early."""
    if _MALLOPT is None:
        return False
    count = count if count is not None else max(2, os.cpu_count() or 2)
    return bool(_MALLOPT(M_ARENA_MAX, int(count)))


class HeapTrimmer:
    """``soon()`` after a session ends; the trim runs ``delay`` seconds after the first call not yet
    served, so a burst of sessions ending makes one trim, and a server whose sessions end more often
    than every ``delay`` seconds still trims once per ``delay``."""

    def __init__(self, delay: float = 1.0, trim: Optional[Callable[[int], int]] = _MALLOC_TRIM) -> None:
        self.delay = delay
        self._trim = trim
        self._timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Task] = None
        self.trims = 0

    def soon(self) -> None:
        """Ask for a trim (from the event loop); calls within ``delay`` of each other make one."""
        if self._trim is None or self._timer is not None:
            return
        self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.to_thread(self._trim, 0)
            self.trims += 1
        except Exception as error:  # noqa: BLE001 - only memory use is at stake
            log.debug("malloc_trim failed: %s", error)

    async def close(self) -> None:
        """Cancel a pending trim and wait for a running one (the loop is about to end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
