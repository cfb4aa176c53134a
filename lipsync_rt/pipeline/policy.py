"""Live or offline: everything that differs between the two, in one object a session is given.

The stages are the same in both; they ask their policy when something is due, what kind of queue to
use and how to batch. Side by side:

===========================  ==========================================  ==============================
question                     :class:`LivePolicy`                          :class:`OfflinePolicy`
===========================  ==========================================  ==============================
queue of droppable work      drop the oldest (a backlog adds no delay)   wait for room (backpressure)
queue of windows, pictures   unbounded (never lose one)                  wait for room
audio that has not come      silence once the producer is overdue        wait for it
                             (its pace + ``audio_grace_ms``), or the
                             release clock is about to need it
batches                      the jobs waiting, never wait for more       blocks of ``batch_size`` indices
a job past its release time  dropped before the engine call              never late
a window that came early      becomes a job at T0 + t_i + L               at once
video frame i leaves         at T0 + t_i + D, ready or not               when it is settled
audio sample s leaves        at T0 + s/16000 + D, in ``audio_chunk``s     when it is written, as written
camera frame i is            the newest one at T0 + t_i                  the i-th one pushed
D - L                        measured at start, grows with the load in   ``overhead_ms`` or 0
                             pauses (``playout.py``); or ``overhead_ms``
latency and overhead         measured                                    not measured (None)
===========================  ==========================================  ==============================
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable, Optional

from lipsync_rt.audio import SAMPLE_RATE

from .calibration import Probe, measure_overhead, warm_up
from .clock import MediaClock, sleep_until
from .config import SessionConfig
from .playout import PlayoutDelay
from .queues import BackpressureQueue, DropOldestQueue, Inbox, Queue
from .timeline import Timeline

if TYPE_CHECKING:
    from .stages.camera import Camera, Tracker
    from .stages.release import ReleaseStage

log = logging.getLogger("lipsync_rt.pipeline.session")


class Policy:
    """The questions; see the table in the module docstring for the two sets of answers."""

    live: bool
    #: How often the audio stage checks for overdue audio (None: never).
    tick: Optional[float]
    #: Whether a batch waits for more jobs of its block (True) or takes only those already waiting.
    fill_batches: bool
    #: The processing budget that follows the load (live, measured budget only; ``playout.py``).
    playout: Optional[PlayoutDelay] = None

    def __init__(self, config: SessionConfig) -> None:
        self.config = config

    def droppable_queue(self, size: int, on_drop: Callable[[object], None]) -> Queue:
        """A queue of work that may be given up (jobs, output frames); ``on_drop`` hears of each loss."""
        raise NotImplementedError

    def ordered_queue(self, size: int) -> Queue:
        """A queue whose items must all arrive (mel windows, camera pictures): frame i is item i."""
        raise NotImplementedError

    def camera(self, inbox: Inbox, clock: MediaClock, track: "Tracker", pictures: Queue) -> "Camera":
        raise NotImplementedError

    async def processing_budget(self, probe: Probe) -> float:
        """D - L in seconds as the session starts (live, ``playout`` may grow it later)."""
        raise NotImplementedError

    def samples_due(self, now: float) -> Optional[int]:
        """Samples due by ``now`` less the grace: where an interrupt starts the next speech."""
        raise NotImplementedError

    def fill_point(self, now: float, overdue: bool) -> Optional[int]:
        """Where the timeline must reach by ``now``, silence filling what is missing (None: nowhere).
        ``overdue``: the producer missed its own pace by more than the grace (``stages/audio.py``)."""
        raise NotImplementedError

    def resume_point(self, arrival: float, samples: int) -> Optional[int]:
        """Where speech of ``samples`` (16 kHz) arriving at ``arrival`` after a pause starts (None: at the end)."""
        raise NotImplementedError

    def stamp(self, arrival: float) -> Optional[float]:
        """The arrival time a message keeps for latency figures (None: not measured)."""
        raise NotImplementedError

    def batch_key(self, index: int, size: int) -> int:
        """Jobs with equal keys may share a batch."""
        raise NotImplementedError

    def is_late(self, index: int, now: float) -> bool:
        """Whether frame ``index`` can no longer make its release time."""
        raise NotImplementedError

    def overhead(self, index: int, now: float) -> Optional[float]:
        """How long after its audio was due frame ``index`` reached a step at ``now`` (None: not measured)."""
        raise NotImplementedError

    def frame_settled(self, index: int, now: float) -> Optional[float]:
        """Frame ``index`` was pasted, or given up as late, at ``now``: its :meth:`overhead`, which
        the live policy also feeds to its playout delay."""
        return self.overhead(index, now)

    async def job_slot(self, index: int) -> None:
        """Until frame ``index`` may become a job: audio pushed faster than real time (a TTS reply
        arrives in a burst) must not flood the engine's queue, where the live policy would drop it."""
        raise NotImplementedError

    async def video_slot(self, index: int, release: "ReleaseStage") -> None:
        """Until frame ``index`` is to leave."""
        raise NotImplementedError

    async def audio_slot(self, position: int, timeline: Timeline) -> int:
        """Until audio from ``position`` is to leave; returns where that stretch stops (``position``: the end)."""
        raise NotImplementedError


class LivePolicy(Policy):
    """Real time on the session's clock: release at T0 + t + D, give up what is late, never wait."""

    live = True
    tick = 0.01
    fill_batches = False

    def __init__(self, config: SessionConfig, clock: MediaClock, lookahead: float) -> None:
        super().__init__(config)
        self.clock = clock
        self.lookahead = lookahead
        self._grace = config.audio_grace_ms / 1000 * SAMPLE_RATE

    def droppable_queue(self, size: int, on_drop: Callable[[object], None]) -> DropOldestQueue:
        return DropOldestQueue(size, on_drop)

    def ordered_queue(self, size: int) -> BackpressureQueue:
        return BackpressureQueue()

    def camera(self, inbox: Inbox, clock: MediaClock, track: "Tracker", pictures: Queue) -> "Camera":
        from .stages.camera import LiveCamera

        return LiveCamera(inbox, clock, track, pictures)

    async def processing_budget(self, probe: Probe) -> float:
        await warm_up(probe, self.config.batch_size)
        if self.config.overhead_ms is not None:
            return self.config.overhead_ms / 1000
        budget = await measure_overhead(probe, self.config.audio_grace_ms)
        if self.config.max_overhead_ms is not None:
            self.playout = PlayoutDelay(budget, self.config.max_overhead_ms / 1000)
        return budget

    def samples_due(self, now: float) -> Optional[int]:
        return math.floor(self.clock.sample_due(now) - self._grace)

    def fill_point(self, now: float, overdue: bool) -> Optional[int]:
        if overdue:
            return self.samples_due(now)
        # A producer keeping its pace is never cut into; only the release clock, which plays sample s at
        # T0 + s/16000 + D, can force silence (a producer slower than real time), one chunk ahead of need.
        return math.floor(self.clock.sample_due(now) - self.clock.delay * SAMPLE_RATE + self.config.audio_chunk
                          + self._grace)

    def resume_point(self, arrival: float, samples: int) -> Optional[int]:
        # Speech after a pause is placed as if captured just before it arrived, as a stream that started
        # at T0 is: the grace stays in front of it for the jitter of the pushes that follow.
        return math.floor(self.clock.sample_due(arrival) - min(samples, self._grace))

    def stamp(self, arrival: float) -> Optional[float]:
        return arrival

    def batch_key(self, index: int, size: int) -> int:
        return 0

    def is_late(self, index: int, now: float) -> bool:
        return self.clock.release_time(index) <= now

    def overhead(self, index: int, now: float) -> Optional[float]:
        return now - (self.clock.t0 + self.clock.frame_time(index) + self.lookahead)

    def frame_settled(self, index: int, now: float) -> Optional[float]:
        overhead = self.overhead(index, now)
        if self.playout is not None:
            self.playout.observe(overhead)
        return overhead

    async def job_slot(self, index: int) -> None:
        # when its window would be complete had the audio come in real time: the budget D - L is
        # what processing gets, as it does for a microphone
        await sleep_until(self.clock.t0 + self.clock.frame_time(index) + self.lookahead)

    async def video_slot(self, index: int, release: "ReleaseStage") -> None:
        if self.playout is not None:
            self._follow_load(index, release)
        await sleep_until(self.clock.release_time(index))

    def _follow_load(self, index: int, release: "ReleaseStage") -> None:
        """Grow D to the budget the playout delay asks for, if the output is in a pause from frame
        ``index`` on (``playout.py``): frame ``index`` and the audio from there leave that much later."""
        assert self.playout is not None
        budget = self.playout.wanted()
        if budget is None or not release.quiet_from(index):
            return
        before = self.clock.delay
        self.playout.grow(budget)
        self.clock.delay = self.lookahead + budget
        log.info("D grew from %.0f to %.0f ms in a pause: frames came ready too close to their release time",
                 before * 1000, self.clock.delay * 1000)

    async def audio_slot(self, position: int, timeline: Timeline) -> int:
        await sleep_until(self.clock.audio_release_time(position))
        stop = position + self.config.audio_chunk
        await timeline.wait_for(stop)
        return min(stop, timeline.end)


class OfflinePolicy(Policy):
    """As fast as the slowest stage: nothing dropped, nothing paced, the reference's batches."""

    live = False
    tick = None
    fill_batches = True

    def droppable_queue(self, size: int, on_drop: Callable[[object], None]) -> BackpressureQueue:
        return BackpressureQueue(size)

    def ordered_queue(self, size: int) -> BackpressureQueue:
        return BackpressureQueue(size)

    def camera(self, inbox: Inbox, clock: MediaClock, track: "Tracker", pictures: Queue) -> "Camera":
        from .stages.camera import OfflineCamera

        return OfflineCamera(inbox, track, pictures)

    async def processing_budget(self, probe: Probe) -> float:
        return (self.config.overhead_ms or 0.0) / 1000

    def samples_due(self, now: float) -> Optional[int]:
        return None

    def fill_point(self, now: float, overdue: bool) -> Optional[int]:
        return None

    def resume_point(self, arrival: float, samples: int) -> Optional[int]:
        return None

    def stamp(self, arrival: float) -> Optional[float]:
        return None

    def batch_key(self, index: int, size: int) -> int:
        return index // size

    def is_late(self, index: int, now: float) -> bool:
        return False

    def overhead(self, index: int, now: float) -> Optional[float]:
        return None

    async def job_slot(self, index: int) -> None:
        return None

    async def video_slot(self, index: int, release: "ReleaseStage") -> None:
        await release.settled(index)

    async def audio_slot(self, position: int, timeline: Timeline) -> int:
        await timeline.wait_for(position + 1)
        return timeline.piece_end(position)


def policy_for(config: SessionConfig, clock: MediaClock, lookahead: float) -> Policy:
    """The policy ``config.live`` asks for."""
    return LivePolicy(config, clock, lookahead) if config.live else OfflinePolicy(config)
