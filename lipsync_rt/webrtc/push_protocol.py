"""The audio-push WebSocket's protocol: its messages, its checks, its close codes.

A client (a TTS, a call centre's audio bridge, a game) opens ``GET /sessions/{id}/audio`` and sends:

- first, text ``{"type": "start", "sample_rate": 24000, "channels": 1}`` (8-96 kHz, 1-8 channels);
- binary messages of PCM s16le, interleaved, at that rate (whole samples of every channel);
- text ``{"type": "end_of_segment"}`` (the reply is complete) and ``{"type": "interrupt"}`` (barge-in).

The server answers with text: ``{"type": "ready", ...}`` after ``start``, then the segment events as they
happen (``playback_started``, ``playback_finished`` with ``position`` in seconds and ``interrupted``), and
``{"type": "error", "reason": ...}`` just before it closes for a mistake. Each close for a mistake has
its own code (:class:`CloseCode`), so a client can tell them apart without parsing the reason.

Everything here is pure (no I/O), so each check is tested on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from ..pipeline.segments import PlaybackFinished, PlaybackStarted, SegmentEvent

MIN_RATE, MAX_RATE = 8000, 96000
MAX_CHANNELS = 8
#: Largest message, text or binary: a second of 48 kHz stereo s16 is 192 kB; more in one message is
#: a client bug, not streaming (the WebSocket closes with 1009, "message too big").
MAX_MESSAGE_BYTES = 256 * 1024
#: Audio a client may push ahead of real time before it is closed with TOO_FAST: a whole TTS reply
#: arrives faster than it plays, but one that runs minutes ahead is flooding memory.
MAX_AHEAD_S = 60.0
#: A client that sends nothing for this long is closed with STALLED (the session keeps running, idle).
IDLE_TIMEOUT_S = 120.0


class CloseCode(IntEnum):
    """WebSocket close codes (4000-4999 are the application's own)."""

    NORMAL = 1000              # the client closed, or the session was deleted
    TOO_BIG = 1009             # a message over MAX_MESSAGE_BYTES (standard code; aiohttp sends it)
    BAD_MESSAGE = 4400         # not the protocol: audio before start, odd byte count, bad JSON or rate
    SESSION_GONE = 4404        # the session ended while the socket was open
    BUSY = 4409                # another client is already pushing audio into this session
    STALLED = 4408             # nothing received for IDLE_TIMEOUT_S
    TOO_FAST = 4429            # more than MAX_AHEAD_S of audio ahead of real time


class ProtocolError(Exception):
    """A message the protocol does not allow: close with ``code``, after telling ``reason``."""

    def __init__(self, reason: str, code: CloseCode = CloseCode.BAD_MESSAGE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Start:
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class EndOfSegment:
    pass


@dataclass(frozen=True)
class Interrupt:
    pass


Control = Union[Start, EndOfSegment, Interrupt]


def _integer(data: dict, key: str, low: int, high: int, what: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ProtocolError(f"'{key}' must be an integer ({what}), got {value!r}")
    if not low <= value <= high:
        raise ProtocolError(f"'{key}' {int(value)} is outside {low}-{high} ({what})")
    return int(value)


def parse_control(text: str) -> Control:
    """A text message -> the control it carries; :class:`ProtocolError` says what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("text messages must be JSON objects such as {\"type\": \"end_of_segment\"}") from None
    if not isinstance(data, dict):
        raise ProtocolError("text messages must be JSON objects with a 'type'")
    kind = data.get("type")
    if kind == "start":
        return Start(_integer(data, "sample_rate", MIN_RATE, MAX_RATE, "Hz"),
                     _integer({"channels": data.get("channels", 1)}, "channels", 1, MAX_CHANNELS, "channels"))
    if kind == "end_of_segment":
        return EndOfSegment()
    if kind == "interrupt":
        return Interrupt()
    raise ProtocolError(f"unknown message type {kind!r}; expected start, end_of_segment or interrupt")


def check_audio(size: int, start: "Start | None") -> None:
    """A binary message of ``size`` bytes is whole s16le samples of the declared channels, after start."""
    if start is None:
        raise ProtocolError('audio before {"type": "start", "sample_rate": ..., "channels": ...}')
    frame = 2 * start.channels
    if size % frame:
        raise ProtocolError(f"an audio message of {size} bytes is not whole s16le samples of "
                            f"{start.channels} channel(s) ({frame} bytes each)")


class Pacer:
    """How far a client's audio runs ahead of real time, as the session's timeline will see it.

    Pushed audio plays from where the previous push ends, or from now if that is past (the session
    fills the gap with silence). ``push`` returns the seconds still to play after this push; more
    than ``max_ahead`` is a client sending faster than real time for too long.
    """

    def __init__(self, max_ahead: float = MAX_AHEAD_S) -> None:
        self.max_ahead = max_ahead
        self._end = 0.0          # wall time (monotonic) at which what was pushed has played

    def push(self, seconds: float, now: float) -> float:
        self._end = max(self._end, now) + seconds
        ahead = self._end - now
        if ahead > self.max_ahead:
            raise ProtocolError(f"audio is arriving faster than real time: {ahead:.0f} s buffered, over the "
                                f"limit of {self.max_ahead:g} s; send it at about the speed it plays",
                                CloseCode.TOO_FAST)
        return ahead

    def ahead(self, now: float) -> float:
        """Seconds of what was pushed still to play at ``now``."""
        return max(0.0, self._end - now)

    def reset(self, now: float) -> None:
        """An interrupt drops everything not yet played."""
        self._end = now


def event_message(event: SegmentEvent) -> dict:
    """A segment event as the JSON the client gets."""
    if isinstance(event, PlaybackStarted):
        return {"type": "playback_started", "segment": event.segment, "time": round(event.time, 4)}
    assert isinstance(event, PlaybackFinished)
    return {"type": "playback_finished", "segment": event.segment, "position": round(event.position, 4),
            "interrupted": event.interrupted, "time": round(event.time, 4)}
