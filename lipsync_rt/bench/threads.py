"""Where a process's CPU goes, by thread: the profile behind ``bench webrtc --profile``.

Every thread of the server has a job (the event loop, the engine's batcher, a session's crops and
blending, aiortc's encoders in the loop's default executor, its decoders), so the CPU each thread used
over a window, read from ``/proc/self/task`` (Linux) and grouped by the Python thread's name, says what
the time is spent on without a sampling profiler's overhead. Threads that Python did not start (torch's
and onnxruntime's intra-op pools) are counted together as ``native pools``.

The kernel also says how long each thread was ready to run but waited for a core
(``/proc/self/task/*/schedstat``): on a machine with more runnable threads than cores, that wait is
where a frame's latency goes even when the CPU used looks modest.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Optional

GROUPS = (
    ("MainThread", "event loop"),
    ("lipsync-engine", "engine"),
    ("lipsync-work", "crops + blending"),
    ("lipsync-track", "face tracking"),
    ("lipsync-encode", "aiortc encode (executor)"),
    ("asyncio_", "aiortc encode (executor)"),
    ("decoder", "aiortc decode"),
)


def group(name: Optional[str]) -> str:
    if name is None:
        return "native pools"
    for prefix, label in GROUPS:
        if prefix in name:
            return label
    return "other Python threads"


def thread_times() -> Optional[dict[int, tuple[str, float, float]]]:
    """``{tid: (group, cpu seconds so far, seconds waited for a core so far)}`` for every thread of this
    process (the wait is 0 where the kernel keeps no schedstat); None off Linux."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                    # ended meanwhile
            continue
        out[int(tid)] = (group(names.get(int(tid))), (int(fields[11]) + int(fields[12])) / ticks, _waited(tid))
    return out


def _waited(tid: str) -> float:
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def cores_by_group(before: Optional[dict], after: Optional[dict], seconds: float, waiting: bool = False
                   ) -> dict[str, float]:
    """CPU cores used per group between two :func:`thread_times` readings ``seconds`` apart; with
    ``waiting``, cores' worth of time the group's threads spent ready to run, waiting for a core."""
    if before is None or after is None or seconds <= 0:
        return {}
    column = 2 if waiting else 1
    used: Counter = Counter()
    for tid, reading in after.items():
        used[reading[0]] += reading[column] - before.get(tid, (reading[0], 0.0, 0.0))[column]
    return {label: round(value / seconds, 3) for label, value in used.most_common() if value > 0}


def stolen_seconds() -> Optional[float]:
    """CPU time the hypervisor gave to other guests while this machine wanted it (``steal`` in
    ``/proc/stat``), summed over cores; None where there is no such file. A virtual machine's
    neighbours can take most of both cores for 50-100 ms at a time, and every session misses its
    release times then: the benchmark reports it beside the drops."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")
