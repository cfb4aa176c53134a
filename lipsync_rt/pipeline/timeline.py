"""The session's audio timeline (sample positions on the master clock) and its mel windows.

:class:`Timeline` holds the 16 kHz samples between being written (pushed audio, or silence put in
for audio that did not come in time) and being released to the sinks, and remembers where the
filled-in silence lies: the unreleased audio of a session is exactly ``[released, end)`` here, and an
interrupt is :meth:`Timeline.cut` at the release position.
:class:`MelFramer` turns the same samples into one 80x16 window per video frame with
``StreamingMel``, with exactly ``audio.mel_chunks``'s frame count and windows, including its final
window clamped to the last 16 columns; after a cut, :meth:`MelFramer.restart` starts a new mel stream
where the new audio begins, and the frames in between read silence.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np

from lipsync_rt.audio import HOP, MEL_SILENCE, MEL_STEP, N_MELS, SAMPLE_RATE, StreamingMel

from .clock import MediaClock
from .source_audio import SourceAudio

#: RMS (full scale 1) under which 10 ms of audio counts as a pause: -40 dBFS, below speech, above a quiet room
QUIET_LEVEL = 0.01


class Timeline:
    """Samples by absolute position, as written (one stored piece per :meth:`append`).

    ``end`` is the write position; ``closed`` after end of input. Readers wait with :meth:`wait_for`.
    ``source``: the pushed audio as it came (``source_audio.py``), cut and let go with the timeline.
    """

    def __init__(self, source: "SourceAudio | None" = None) -> None:
        self.source = source
        self.end = 0
        self.closed = False
        self.floor = 0              # where the audio of the last cut stops: before it, windows hear nothing
        self.silence_samples = 0
        self._chunks: deque[tuple[int, np.ndarray]] = deque()   # (start, samples)
        self._silence: list[list[int]] = []                       # merged [start, stop) intervals
        self._changed = asyncio.Event()

    def append(self, samples: np.ndarray, silence: bool = False) -> int:
        """Write samples at the end; returns their start position."""
        start = self.end
        n = int(samples.size)
        if n == 0:
            return start
        self._chunks.append((start, samples))
        if silence:
            self.silence_samples += n
            if self._silence and self._silence[-1][1] == start:
                self._silence[-1][1] = start + n
            else:
                self._silence.append([start, start + n])
        self.end += n
        self._changed.set()
        return start

    def close(self) -> None:
        """End of input: nothing more will be written."""
        self.closed = True
        self._changed.set()

    async def wait_for(self, position: int) -> None:
        """Until samples up to ``position`` are written, or the timeline is closed."""
        while self.end < position and not self.closed:
            self._changed.clear()
            await self._changed.wait()

    def piece_end(self, position: int) -> int:
        """End of the stored piece that holds ``position`` (``end`` when none does)."""
        for a, chunk in self._chunks:
            if a <= position < a + chunk.size:
                return a + chunk.size
        return self.end

    def cut(self, position: int) -> None:
        """Forget everything written from ``position`` on (an interrupt at the release position); what
        comes next is written from there. Audio before ``position`` counts as silence to
        :meth:`is_silence` from now on: the speech it belonged to is over."""
        position = min(max(position, self.floor), self.end)
        while self._chunks and self._chunks[-1][0] >= position:
            self._chunks.pop()
        if self._chunks:
            a, chunk = self._chunks[-1]
            if a + chunk.size > position:
                self._chunks[-1] = (a, chunk[:position - a])
        kept = []
        for a, b in self._silence:
            if a < position:
                kept.append([a, min(b, position)])
            if b > position:                      # filled silence that will never leave
                self.silence_samples -= b - max(a, position)
        self._silence = kept
        self.end = self.floor = position
        if self.source is not None:
            self.source.cut(position)
        self._changed.set()

    def is_silence(self, start: int, stop: int) -> bool:
        """True when [start, stop) lies inside one stretch of filled-in silence (clipped to the stream,
        which starts again at the last cut)."""
        start, stop = max(start, 0, self.floor), min(stop, self.end)   # the stream's ends mirror what is inside
        if stop <= start:       # wholly before the last cut
            return True
        for a, b in reversed(self._silence):
            if a <= start and stop <= b:
                return True
            if b <= start:
                break
        return False

    def quiet(self, start: int, stop: int, level: float = QUIET_LEVEL) -> bool:
        """True when what is still held of [start, stop) (nothing counts too) stays below ``level``
        RMS in every 10 ms block: no speech in it, or none yet."""
        if self._chunks:
            start = max(start, self._chunks[0][0])
        samples = self.read(start, stop) if stop > start else np.zeros(0, np.float32)
        if samples.size == 0:
            return True
        edges = np.arange(0, samples.size, SAMPLE_RATE // 100)
        power = np.add.reduceat(np.square(samples, dtype=np.float64), edges) / np.diff(np.append(edges, samples.size))
        return bool(np.all(power < level * level))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) (stop clipped to ``end``); positions already discarded raise."""
        stop = min(stop, self.end)
        out = np.zeros(max(0, stop - start), np.float32)
        for a, chunk in self._chunks:
            b = a + chunk.size
            if b <= start:
                continue
            if a >= stop:
                break
            lo, hi = max(a, start), min(b, stop)
            out[lo - start:hi - start] = chunk[lo - a:hi - a]
        if self._chunks and self._chunks[0][0] > start and stop > start:
            raise ValueError(f"timeline samples before {self._chunks[0][0]} were discarded")
        return out

    def clear(self) -> None:
        """Let go of every sample (a closed session); positions stay where they were."""
        self._chunks.clear()
        self._silence.clear()
        if self.source is not None:
            self.source = SourceAudio()
        self.closed = True
        self._changed.set()

    def discard_before(self, position: int) -> None:
        """Forget what has been released (silence intervals are kept 0.5 s longer for ``is_silence``)."""
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= position:
            self._chunks.popleft()
        while len(self._silence) > 1 and self._silence[0][1] <= position - 8000:
            self._silence.pop(0)
        if self.source is not None:
            self.source.discard_before(position)


class MelFramer:
    """Samples in, ``(frame index, window[80, 16])`` out as soon as each window's columns are final."""

    def __init__(self, clock: MediaClock) -> None:
        self.clock = clock
        self._mel = StreamingMel()
        self._cols = np.zeros((N_MELS, 0), np.float32)
        self._base = 0          # absolute index of self._cols[:, 0]
        self.next_index = 0

    def push(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        return self._add(self._mel.push(samples), final=False)

    def restart(self, position: int) -> int:
        """Start a new mel stream at the first column centre at or after sample ``position`` (after a
        cut: the audio before it is over). Frames go on from ``next_index``; the columns their windows
        would take from before the new stream are silence. Returns the new stream's first sample,
        which the caller writes next (the gap from ``position`` is silence)."""
        first = -(-position // HOP)
        self._mel = StreamingMel()
        self._cols = np.zeros((N_MELS, 0), np.float32)
        self._base = first
        return first * HOP

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """End of stream: the remaining windows, then ``mel_chunks``'s final clamped window."""
        return self._add(self._mel.flush(), final=True)

    def window_samples(self, index: int) -> tuple[int, int]:
        """The sample range [start, stop) that frame ``index``'s window reads (start < 0: before the stream)."""
        first = self.clock.mel_start(index)
        return first * HOP - StreamingMel.lookahead_samples, (first + MEL_STEP - 1) * HOP + StreamingMel.lookahead_samples

    def _add(self, columns: np.ndarray, final: bool) -> list[tuple[int, np.ndarray]]:
        if columns.shape[1]:
            self._cols = np.concatenate((self._cols, columns), axis=1)
        total = self._base + self._cols.shape[1]
        out = []
        while True:
            start = self.clock.mel_start(self.next_index)
            if start + MEL_STEP > total:
                break
            out.append((self.next_index, self._window(start)))
            self.next_index += 1
        if final and total >= MEL_STEP:
            out.append((self.next_index, self._window(total - MEL_STEP)))
            self.next_index += 1
        keep = min(self.clock.mel_start(self.next_index), total - MEL_STEP) if not final else total
        if keep > self._base:
            self._cols = self._cols[:, keep - self._base:]
            self._base = keep
        return out

    def _window(self, start: int) -> np.ndarray:
        # A model that reads before the stream's start (mel_offset < 0), or a frame whose window began
        # before a restart, hears silence there. Only then is start < _base (the first column kept).
        missing = self._base - start
        if missing > 0:
            return np.concatenate((np.full((N_MELS, min(missing, MEL_STEP)), MEL_SILENCE, np.float32),
                                   self._cols[:, :max(0, MEL_STEP - missing)]), axis=1)
        return np.ascontiguousarray(self._cols[:, start - self._base:start - self._base + MEL_STEP])
