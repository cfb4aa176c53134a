"""The threads aiortc encodes in: few of them, and below the lip-sync stages' priority.

aiortc encodes every video frame and every 20 ms of audio of every peer in the event loop's default
executor, which asyncio sizes at cores + 4 threads. On a small machine that is most of the runnable
threads: with three sessions on two cores, six encoder threads, the event loop, the engine and the
sessions' blending threads took turns on the cores, and each of them spent about as long waiting
for a core as running (``bench webrtc --profile``). The encoders do not decide whether a frame is
late, though: a frame drops when its mouth is not pasted by its release time, and encoding only starts
after that. So the server gives the loop a default executor of its own, with ``threads`` threads
(default: half the cores, at least one) whose nice value is raised by ``nice`` (Linux: per thread; a
process may always lower its own threads' priority). Measured on 2 cores, three sessions, 15 s each:
six threads at normal priority dropped about 960 frames of 1125, one thread about 140, one thread at
nice +10 or +19 13 to 41. Encoding then waits for spare CPU, which adds to the time from a frame's
release to its send (latency p99 70-260 ms instead of 70-150) but not to drops, and audio and video
are delayed alike since both are encoded in these threads.

Other users of the loop's default executor (DNS lookups for ICE, for one) share these threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Optional

from lipsync_rt.engine.onnx_engine import available_cpus

log = logging.getLogger(__name__)

#: how much lower than the rest of the process the encoder threads run (nice value added)
ENCODE_NICE = 10


def default_threads() -> int:
    return max(1, available_cpus() // 2)


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as error:             # not Linux (PRIO_PROCESS would mean the whole process), or refused
        log.debug("encoder threads keep their priority: %s", error)


def install(loop: asyncio.AbstractEventLoop, threads: Optional[int] = None,
            nice: int = ENCODE_NICE) -> concurrent.futures.ThreadPoolExecutor:
    """Make ``loop``'s default executor the encoder pool described above, and return it (asyncio
    shuts it down with the loop)."""
    pool = concurrent.futures.ThreadPoolExecutor(threads or default_threads(), thread_name_prefix="lipsync-encode",
                                                 initializer=_lower_priority, initargs=(nice,))
    loop.set_default_executor(pool)
    return pool
