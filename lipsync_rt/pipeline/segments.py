"""Speech segments: one TTS reply each, followed from push to release, and the events they raise.

A voice agent pushes its replies as segments (``push_audio(..., segment=ID)``, ended by
``end_of_segment(ID)`` or cut by ``interrupt()``). The session answers with two events per segment,
which is what LiveKit's ``AudioReceiver.notify_playback_started/finished`` and Pipecat's
bot-started/stopped-speaking need:

- :class:`PlaybackStarted` when the segment's first sample is released;
- :class:`PlaybackFinished` when its last sample is released, or when an interrupt cuts it, with
  ``position`` the seconds of it actually released. It comes exactly once per segment, also for one cut
  before a single sample of it left (``position`` 0, no PlaybackStarted before it).

:class:`Segments` is the ledger. Its input side runs in the caller's thread when audio is pushed (it
refuses what makes no sense: audio for a segment that has ended); its timeline side is told by the
audio stage where each segment's samples landed on the 16 kHz timeline, and by the release stage how
far audio has been released; the events follow from those two positions. Gaps of filled-in silence
inside a segment (a TTS slower than real time) are not part of it: ``position`` counts the segment's
own samples.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Union

from lipsync_rt.audio import SAMPLE_RATE
from lipsync_rt.errors import LipSyncError

#: Any hashable id (a TTS context id, a counter); None is not one: it means "no segment".
SegmentId = Hashable
_HISTORY = 256       # finished ids remembered, so a late end_of_segment for one is a no-op, not an error


@dataclass(frozen=True)
class PlaybackStarted:
    """The first sample of ``segment`` was released; ``pts`` is its position (samples at 16 kHz)."""

    segment: SegmentId
    pts: int

    @property
    def time(self) -> float:
        return self.pts / SAMPLE_RATE


@dataclass(frozen=True)
class PlaybackFinished:
    """``segment`` is over: its last sample was released, or it was cut (``interrupted``).

    ``position``: seconds of the segment released (played) in all; ``pts``: where on the session's
    audio (samples at 16 kHz) it stopped.
    """

    segment: SegmentId
    position: float
    interrupted: bool
    pts: int

    @property
    def time(self) -> float:
        return self.pts / SAMPLE_RATE


SegmentEvent = Union[PlaybackStarted, PlaybackFinished]


@dataclass
class _Entry:
    """One segment not yet finished: its runs of samples on the timeline and where it stands."""

    id: SegmentId
    runs: list[list[int]] = field(default_factory=list)   # [start, stop) on the timeline, in order
    end: Optional[int] = None                              # timeline position where its audio ended
    ended: bool = False                                    # end_of_segment was called (input side)
    started: bool = False

    def samples_before(self, position: int) -> int:
        return sum(max(0, min(b, position) - a) for a, b in self.runs)


class Segments:
    """The ledger of one session; ``emit`` hears every event (on the event loop), once."""

    def __init__(self, emit: Callable[[SegmentEvent], None]) -> None:
        self._emit = emit
        self._lock = threading.Lock()
        self._entries: OrderedDict[SegmentId, _Entry] = OrderedDict()   # in timeline order
        self._finished: OrderedDict[SegmentId, bool] = OrderedDict()    # id -> interrupted
        self._open: Optional[SegmentId] = None                         # input side
        self._released = 0
        self._inband: list[SegmentEvent] = []

    # -- input side: the caller's thread, at push time

    def accept(self, segment: Optional[SegmentId]) -> bool:
        """Audio is being pushed for ``segment``: False when it is to be dropped (the segment was cut).

        A new id opens a segment and ends the open one; audio for a segment that has ended is a mistake.
        """
        if segment is None:
            with self._lock:
                self._end_open()
            return True
        with self._lock:
            if segment == self._open:
                return True
            if self._finished.get(segment):        # cut by an interrupt: the rest of that reply is dropped
                return False
            if segment in self._entries or segment in self._finished:
                raise LipSyncError(f"segment {segment!r} has ended; push a new reply with a new segment id")
            self._end_open()
            self._entries[segment] = _Entry(segment)
            self._open = segment
            return True

    def end(self, segment: Optional[SegmentId]) -> Optional[SegmentId]:
        """``end_of_segment``: the id to end (None: nothing to do). Ending one that is over is a no-op;
        an id never pushed is an error."""
        with self._lock:
            if segment is None or segment == self._open:
                ended, self._open = self._open, None
                if ended is not None:
                    self._entries[ended].ended = True
                return ended
            if segment in self._entries or segment in self._finished:
                return None
        raise LipSyncError(f"unknown segment {segment!r}: no audio was pushed for it")

    @property
    def open(self) -> Optional[SegmentId]:
        """The segment that pushed audio goes to now (input side)."""
        return self._open

    def _end_open(self) -> None:
        if self._open is not None:
            self._entries[self._open].ended = True
            self._open = None

    # -- timeline side: the event loop

    def wrote(self, segment: SegmentId, start: int, stop: int) -> None:
        """The audio stage wrote samples [start, stop) of ``segment`` on the timeline."""
        with self._lock:
            entry = self._entries.get(segment)
            if entry is None or stop <= start:
                return
            if entry.runs and entry.runs[-1][1] == start:
                entry.runs[-1][1] = stop
            else:
                entry.runs.append([start, stop])

    def close(self, segment: SegmentId, position: int) -> None:
        """All of ``segment``'s audio is on the timeline, ending at ``position``."""
        with self._lock:
            entry = self._entries.get(segment)
            if entry is None or entry.end is not None:
                return
            # its last sample, not where the timeline stands: silence may have been filled in since
            entry.end = entry.runs[-1][1] if entry.runs else position
        self._report(self._released)

    def released(self, position: int) -> None:
        """Audio up to ``position`` has left the session."""
        self._report(position)

    def cut(self, position: int) -> None:
        """An interrupt at release position ``position``: every segment not finished is over."""
        with self._lock:
            events = []
            for entry in self._entries.values():
                played = entry.samples_before(position)
                events.append(PlaybackFinished(entry.id, played / SAMPLE_RATE, True, position))
                self._remember(entry.id, True)
            self._entries.clear()
            self._open = None
        self._send(events)

    def segment_at(self, position: int) -> tuple[Optional[SegmentId], int, int]:
        """``(segment, its samples before position, where its run stops)`` for the sample at
        ``position``; ``(None, 0, next run start)`` between segments (a chunk never spans two)."""
        with self._lock:
            boundary = None
            for entry in self._entries.values():
                for a, b in entry.runs:
                    if a <= position < b:
                        return entry.id, entry.samples_before(position), b
                    if a > position and (boundary is None or a < boundary):
                        boundary = a
            return None, 0, boundary if boundary is not None else 1 << 62

    def take_inband(self) -> tuple[SegmentEvent, ...]:
        """The events since the last call (the release stage attaches them to the next audio chunk)."""
        events, self._inband = tuple(self._inband), []
        return events

    # -- events

    def _report(self, position: int) -> None:
        with self._lock:
            self._released = max(self._released, position)
            events = []
            for entry in list(self._entries.values()):
                if not entry.started and entry.runs and entry.runs[0][0] < self._released:
                    entry.started = True
                    events.append(PlaybackStarted(entry.id, entry.runs[0][0]))
                if entry.end is not None and entry.end <= self._released:
                    total = entry.samples_before(entry.end)
                    events.append(PlaybackFinished(entry.id, total / SAMPLE_RATE, False, entry.end))
                    del self._entries[entry.id]
                    self._remember(entry.id, False)
        self._send(events)

    def _remember(self, segment: SegmentId, interrupted: bool) -> None:
        self._finished[segment] = interrupted
        while len(self._finished) > _HISTORY:
            self._finished.popitem(last=False)

    def _send(self, events: list[SegmentEvent]) -> None:
        for event in events:
            self._inband.append(event)
            self._emit(event)
