"""Keep Python's full garbage collections off the live path.

A live server holds about 200,000 objects the collector tracks once torch, onnxruntime, aiortc and the
models are loaded, and none of them ever becomes garbage. A full (generation 2) collection walks
them all while holding the GIL: on the 2-core development VM that took 90-130 ms, every 10-20 s with
three WebRTC sessions, and every session missed the release time of the frames due meanwhile (43-66
of 1,500 frames in a 20 s run, against 2-27 with the fix; ``benchmarks/RESULTS.md``).

:func:`freeze_startup_objects` collects once and moves what survives into the collector's permanent
generation, which later collections skip. Objects that are freed by reference counting (almost all)
are freed as before; only garbage cycles among the frozen objects would stay, and start-up makes none
worth counting. Call it when start-up is over and before the first live frame: after the engine,
the avatars and the server are ready; and :func:`thaw` when the live work is over, in a process that
goes on (a test run calling the commands in turn), so that what was frozen can be collected again.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect, then exempt every object alive now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d start-up objects exempt from garbage collection", frozen)
    return frozen


def thaw() -> None:
    """The live work is over: everything frozen is the collector's again."""
    gc.unfreeze()
