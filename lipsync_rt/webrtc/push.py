"""A session whose speech comes from the audio-push API, not from a microphone.

``POST /sessions`` makes a :class:`PushSession`: an avatar session (its :class:`SessionHub`, so it can be
recorded and streamed) that lives until ``DELETE /sessions/{id}``, the server's shutdown, or nobody
having used it for ``idle_timeout`` seconds (no audio socket, no viewer). Speech arrives over one
WebSocket at a time (:meth:`PushSession.serve_socket`, protocol in ``push_protocol.py``); viewers
watch it over WebRTC (``/offer`` naming the session), all from the one broadcast.

Replies are the session's segments: the first audio after ``start``, ``end_of_segment`` or an interrupt
opens segment 1, 2, 3, ...; the events the session raises for them go back over the socket. A client
that misbehaves is closed with a code and a reason, and the session goes on; a client that goes away
leaves the session idling for the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Optional

from aiohttp import WSMsgType, web

from ..errors import LipSyncError
from ..integrations.shared import pcm_from_bytes
from .push_protocol import (IDLE_TIMEOUT_S, MAX_AHEAD_S, CloseCode, EndOfSegment, Interrupt, Pacer,
                            ProtocolError, Start, check_audio, event_message, parse_control)

if TYPE_CHECKING:
    from .hub import SessionHub
    from .peer import Peer

log = logging.getLogger(__name__)
OUTBOX = 256      # messages waiting for a slow client; beyond that the oldest events are not sent


class PushSession:
    def __init__(self, hub: "SessionHub", avatar: str, *, idle_timeout: float = 300.0,
                 socket_idle_timeout: float = IDLE_TIMEOUT_S, max_ahead: float = MAX_AHEAD_S) -> None:
        self.hub = hub
        self.id = hub.id
        self.short_id = hub.id[:8]
        self.session = hub.session
        self.avatar = avatar
        self.viewers: dict[str, "Peer"] = {}
        self.socket: Optional[web.WebSocketResponse] = None
        self.socket_idle_timeout = socket_idle_timeout
        self.max_ahead = max_ahead
        self.idle_timeout = idle_timeout
        self.segments = 0                 # replies opened so far: the next is segments + 1
        self._segment: Optional[int] = None
        self._outbox: Optional[asyncio.Queue] = None
        self._pacer = Pacer(max_ahead)    # the session's: audio a socket left behind still counts for the next
        self._last_used = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self.closed = False
        self.bytes_received = 0

    def start(self, on_idle) -> None:
        """Forward the session's events to the socket; ``on_idle()`` is called when nobody used the
        session for ``idle_timeout`` seconds (the server then deletes it)."""
        self._tasks.append(asyncio.ensure_future(self._forward_events()))
        self._tasks.append(asyncio.ensure_future(self._watch_idle(on_idle)))

    # -- speech
    def push(self, pcm, rate: int) -> None:
        if self._segment is None:
            self.segments += 1
            self._segment = self.segments
        self.session.push_audio(pcm, rate, segment=self._segment)

    def end_of_segment(self) -> None:
        if self._segment is not None and self.session.running:
            self.session.end_of_segment(self._segment)
        self._segment = None

    def interrupt(self) -> None:
        self._segment = None
        self._pacer.reset(time.monotonic())
        self.session.interrupt()        # a closed session ignores it

    # -- the socket
    async def serve_socket(self, ws: web.WebSocketResponse) -> None:
        """Read one client's messages until it leaves or breaks the protocol (then close it with the
        code and reason). The session goes on either way."""
        self._outbox = outbox = asyncio.Queue(OUTBOX)
        sender = asyncio.ensure_future(self._send(ws, outbox))
        start: Optional[Start] = None
        try:
            while True:
                # idle: nothing received, and nothing it sent is still to play (a client waiting for
                # playback_finished is not stalled)
                wait = self.socket_idle_timeout + self._pacer.ahead(time.monotonic()) + max(0.0, self.session.delay)
                try:
                    msg = await asyncio.wait_for(ws.receive(), wait)
                except asyncio.TimeoutError:
                    raise ProtocolError(f"nothing received for {self.socket_idle_timeout:g} s; the session goes on "
                                        "idle, connect again to speak", CloseCode.STALLED) from None
                self._last_used = time.monotonic()
                if msg.type == WSMsgType.BINARY:
                    check_audio(len(msg.data), start)
                    pcm = pcm_from_bytes(msg.data, start.sample_rate, start.channels)
                    self._pacer.push(len(pcm) / start.sample_rate, time.monotonic())
                    self.bytes_received += len(msg.data)
                    if len(pcm):
                        try:
                            self.push(pcm, start.sample_rate)
                        except LipSyncError as error:      # the session ended under us
                            raise ProtocolError(str(error), CloseCode.SESSION_GONE) from None
                elif msg.type == WSMsgType.TEXT:
                    control = parse_control(msg.data)
                    if isinstance(control, Start):
                        start = control
                        self._send_now({"type": "ready", "session": self.id, "sample_rate": start.sample_rate,
                                        "channels": start.channels, "delay": round(self.session.delay, 4)})
                    elif isinstance(control, EndOfSegment):
                        self.end_of_segment()
                    elif isinstance(control, Interrupt):
                        self.interrupt()
                else:           # CLOSE, CLOSING, CLOSED, or ERROR (a message over the size limit: 1009)
                    if msg.type == WSMsgType.ERROR:
                        log.info("push session %s: socket error: %s", self.short_id, ws.exception())
                    break
        except ProtocolError as error:
            log.info("push session %s: closing its audio socket (%d): %s", self.short_id, error.code, error.reason)
            with _quiet():
                await ws.send_str(json.dumps({"type": "error", "reason": error.reason, "code": int(error.code)}))
            with _quiet():
                await ws.close(code=int(error.code), message=error.reason.encode()[:120])
        finally:
            self.end_of_segment()          # the client is gone: its reply is complete as far as it came
            self._outbox = None
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self._last_used = time.monotonic()

    def _send_now(self, message: dict) -> None:
        outbox = self._outbox
        if outbox is not None and not outbox.full():
            outbox.put_nowait(message)

    @staticmethod
    async def _send(ws: web.WebSocketResponse, outbox: asyncio.Queue) -> None:
        while True:
            message = await outbox.get()
            try:
                await ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                return

    async def _forward_events(self) -> None:
        async for event in self.session.events():
            self._send_now(event_message(event))

    async def _watch_idle(self, on_idle) -> None:
        step = min(5.0, self.idle_timeout / 4)
        while True:
            await asyncio.sleep(step)
            if self.socket is not None or self.viewers:
                self._last_used = time.monotonic()
            elif time.monotonic() - self._last_used > self.idle_timeout:
                on_idle(self)
                return

    # -- ending
    async def close(self, reason: str, code: CloseCode = CloseCode.NORMAL) -> None:
        """Close the socket (with ``reason``), every viewer, then the hub (the recording is finalised)."""
        if self.closed:
            return
        self.closed = True
        log.info("push session %s closing: %s", self.short_id, reason)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        ws = self.socket
        if ws is not None:
            with _quiet():
                await ws.send_str(json.dumps({"type": "closed", "reason": reason}))
            with _quiet():
                await ws.close(code=int(code), message=reason.encode()[:120])
        await asyncio.gather(*(viewer.close(f"the session it watched ended: {reason}")
                               for viewer in list(self.viewers.values())), return_exceptions=True)
        await self.hub.close()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)


class _quiet:
    """Ignore a peer that has already gone while we tell it goodbye."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        return kind is not None and issubclass(kind, (ConnectionError, RuntimeError, asyncio.TimeoutError))
