"""The WebRTC server: aiohttp signalling, one aiortc peer and one lip-sync session per client.

Routes: ``GET /`` (the page), ``GET /static/*``, ``GET /config`` (modes and avatar names for the
page), ``POST /offer`` (SDP offer in, complete answer out: aiortc gathers every candidate, there is no
trickle; ``"session": ID`` watches a push session), ``POST /close`` (end a session now), ``GET /metrics``
(Prometheus text), and the audio-push API (``push.py``): ``POST /sessions``, ``GET /sessions/{id}/audio``
(WebSocket), ``POST /sessions/{id}/interrupt``, ``DELETE /sessions/{id}``.

Every session, however driven, is a :class:`~lipsync_rt.webrtc.hub.SessionHub`: its output is read once
and shared by its viewers, its recording (``record_dir``) and its RTMP stream.

Safe by default: the command binds 127.0.0.1; with a token, ``/offer``, ``/close``, ``/metrics`` and
every ``/sessions`` route need it (the WebSocket also takes ``?token=``, as browsers cannot set headers);
bodies are size-limited; avatars are chosen by name, never by path; the ICE configuration
holds only the STUN/TURN servers the operator configured (none by default, so nothing is contacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Optional

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from ..errors import LipSyncError
from ..gc_tuning import freeze_startup_objects, thaw
from ..pipeline.config import SessionConfig
from . import encode_pool
from .heap import HeapTrimmer
from .hub import SessionHub
from .limits import (MAX_BODY_BYTES, MODES, HTTPRefusal, OfferRequest, check_size, check_token, load_json, parse_offer,
                     parse_push)
from .metrics import CONTENT_TYPE, ServerMetrics, render
from .peer import Peer
from .push import PushSession
from .push_protocol import IDLE_TIMEOUT_S, MAX_AHEAD_S, MAX_MESSAGE_BYTES, CloseCode
from .shared_video import share_encoder

if TYPE_CHECKING:
    from ..engine import Engine, MicroBatcher
    from ..pipeline import Avatar, LipSyncSession

    #: Makes one session from the shared batcher and the avatar chosen (None in camera mode).
    SessionFactory = Callable[[MicroBatcher, Optional[Avatar]], LipSyncSession]

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {
    # The page loads only its own script and style; media and signalling stay on this origin.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs; the defaults are the safe ones (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[str] = None
    max_sessions: int = 4
    max_body: int = MAX_BODY_BYTES
    ice_servers: tuple[str, ...] = ()  # e.g. ("stun:stun.example.org:3478",); empty: host candidates only
    connect_timeout: float = 20.0  # a peer not connected by then is closed
    record_dir: Optional[Path] = None  # every session's output into record_dir/<session>.mp4
    max_viewers: int = 8           # WebRTC viewers of one push session
    push_idle_timeout: float = 300.0   # a push session with no audio socket and no viewer this long ends
    socket_idle_timeout: float = IDLE_TIMEOUT_S   # an audio socket silent this long is closed (4408)
    max_ahead: float = MAX_AHEAD_S      # seconds of audio a socket may push ahead of real time (4429)
    max_message: int = MAX_MESSAGE_BYTES   # largest WebSocket message (1009 beyond)
    encode_threads: Optional[int] = None  # aiortc's encoders: threads (None: half the cores), see encode_pool.py
    encode_nice: int = encode_pool.ENCODE_NICE   # ... and how much lower their priority is (0: the same)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise LipSyncError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if self.max_body < 1024:
            raise LipSyncError(f"the body limit must be >= 1024 bytes, got {self.max_body}")
        if self.encode_threads is not None and self.encode_threads < 1:
            raise LipSyncError(f"encode_threads must be >= 1, got {self.encode_threads}")
        if not 0 <= self.encode_nice <= 19:
            raise LipSyncError(f"encode_nice must be in 0-19, got {self.encode_nice}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise LipSyncError(f"ICE server {url!r} must start with stun:, turn: or turns:")


def _json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class LipSyncServer:
    """Owns the shared engine (through one micro-batcher), the prepared avatars and the open peers.

    ``engine`` is an Engine (wrapped in a MicroBatcher owned here) or a MicroBatcher (shared, not
    closed here). ``session_factory(engine, avatar)`` makes a session; the default builds a
    :class:`~lipsync_rt.pipeline.LipSyncSession`.
    """

    def __init__(self, engine: "Engine | MicroBatcher", avatars: dict[str, "Avatar"], config: ServerConfig = ServerConfig(),
                 *, session_config: Optional["SessionConfig"] = None,
                 session_factory: Optional["SessionFactory"] = None,
                 max_batch: int = 16) -> None:
        self.config = config
        self.avatars = dict(avatars)
        self.metrics = ServerMetrics()
        self.peers: dict[str, Peer] = {}
        self.pushes: dict[str, PushSession] = {}
        self._reserved = 0
        self._owns_batcher = False
        from ..engine.batcher import MicroBatcher

        if isinstance(engine, MicroBatcher):
            self.batcher = engine
        else:
            self.batcher = MicroBatcher(engine, max_batch=max_batch)
            self._owns_batcher = True
        self._session_config = session_config
        self._session_factory = session_factory or self._default_session
        self.heap = HeapTrimmer()

    def _default_session(self, engine: "MicroBatcher", avatar: Optional["Avatar"]) -> "LipSyncSession":
        from ..pipeline import LipSyncSession

        return LipSyncSession(engine, avatar=avatar, config=self._session_config or SessionConfig())

    # -- routes
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_get("/", self.index)
        app.router.add_get("/config", self.client_config)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/close", self.close_session)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_post("/sessions", self.create_push)
        app.router.add_get("/sessions/{id}/audio", self.audio_socket)
        app.router.add_post("/sessions/{id}/interrupt", self.interrupt_push)
        app.router.add_delete("/sessions/{id}", self.delete_push)
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        app.on_shutdown.append(lambda _app: self.close())
        return app

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def client_config(self, request: web.Request) -> web.Response:
        """What the page needs to offer choices: never paths, only names."""
        names = list(self.avatars)
        return web.json_response({
            "modes": list(MODES) if names else ["camera"],
            "avatars": names,
            "token_required": bool(self.config.token),
            "ice_servers": [{"urls": url} for url in self.config.ice_servers],
            "max_sessions": self.config.max_sessions,
        }, headers={"Cache-Control": "no-store"})

    def _refused(self, refusal: HTTPRefusal) -> web.Response:
        """Every refused request is counted by kind (for /metrics) and answered with its one-line reason."""
        self.metrics.rejected[refusal.kind] += 1
        return _json_error(refusal.status, refusal.reason)

    def _authorize(self, request: web.Request) -> None:
        check_token(self.config.token, request.headers.get("Authorization"), request.query.get("token"))

    async def _read_body(self, request: web.Request) -> bytes:
        check_size(request.content_length, self.config.max_body)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HTTPRefusal(413, f"request body is over the limit of {self.config.max_body} bytes",
                              "too_large") from None

    async def offer(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            body = await self._read_body(request)
            offer = parse_offer(body, tuple(self.avatars), next(iter(self.avatars), None))
            if offer.session is not None:
                push = self._push(offer.session)
                if len(push.viewers) >= self.config.max_viewers:
                    raise HTTPRefusal(503, f"this session already has {self.config.max_viewers} viewers; "
                                      "try again later", "busy")
            else:
                self._check_capacity()
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        if offer.session is not None:
            try:
                return await self._answer_viewer(offer, push)
            except HTTPRefusal as refusal:
                return self._refused(refusal)
        self._reserved += 1  # held across the awaits below, so concurrent offers cannot overshoot
        try:
            return await self._answer(offer)
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        finally:
            self._reserved -= 1

    def _check_capacity(self) -> None:
        owners = sum(1 for peer in self.peers.values() if not peer.viewer)
        if owners + len(self.pushes) + self._reserved >= self.config.max_sessions:
            raise HTTPRefusal(503, f"the server is busy: all {self.config.max_sessions} sessions are in use; "
                              "try again later", "busy")

    def _push(self, session_id: str) -> PushSession:
        push = self.pushes.get(session_id)
        if push is None:
            raise HTTPRefusal(404, "no such session (it may have ended already)", "not_found")
        return push

    async def _new_hub(self, avatar_name: Optional[str], rtmp: Optional[str] = None) -> SessionHub:
        """A started session for ``avatar_name`` (None: camera mode) in its hub (not yet broadcasting)."""
        avatar = self.avatars[avatar_name] if avatar_name is not None else None
        session = self._session_factory(self.batcher, avatar)
        try:
            await session.start()
        except BaseException:
            await session.close()
            raise
        return SessionHub(session, secrets.token_urlsafe(16), record_dir=self.config.record_dir, rtmp=rtmp)

    async def _connect(self, offer: OfferRequest, peer_for) -> Peer:
        """Answer ``offer`` with a new connection and the peer ``peer_for(pc)`` makes for it."""
        ice = [RTCIceServer(urls=url) for url in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        peer = None
        try:
            peer = peer_for(pc)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except Exception as error:  # noqa: BLE001 - aiortc raises several types for a bad SDP
                raise HTTPRefusal(400, f"the SDP offer was refused: {error or type(error).__name__}",
                                  "bad_request") from None
            pc.addTrack(peer.video_track)
            pc.addTrack(peer.audio_track)
            await pc.setLocalDescription(await pc.createAnswer())
            share_encoder(pc, peer.video_track, peer.hub.encoders)   # one video encoder per codec, all viewers
        except BaseException:
            if peer is not None:
                await peer.close("offer failed")
            else:
                await pc.close()
            raise
        return peer

    async def _answer_viewer(self, offer: OfferRequest, push: PushSession) -> web.Response:
        peer = await self._connect(offer, lambda pc: Peer(pc, push.hub, "avatar", self.metrics, self._forget,
                                                          viewer=True))
        if push.closed:                      # deleted while we negotiated
            await peer.close("the session ended")
            raise HTTPRefusal(404, "no such session (it may have ended already)", "not_found")
        push.viewers[peer.id] = peer
        self.peers[peer.id] = peer
        peer.watch_connect(self.config.connect_timeout)
        log.info("viewer %s watches push session %s", peer.short_id, push.short_id)
        answer = peer.pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": push.id, "viewer": peer.id})

    async def _answer(self, offer: OfferRequest) -> web.Response:
        hub = await self._new_hub(offer.avatar if offer.mode == "avatar" else None)
        try:
            peer = await self._connect(offer, lambda pc: Peer(pc, hub, offer.mode, self.metrics, self._forget))
        except BaseException:
            await hub.close()
            raise
        hub.start()
        self.peers[peer.id] = peer
        peer.registered = True
        self.metrics.sessions_started += 1
        peer.watch_connect(self.config.connect_timeout)
        log.info("session %s started (%s mode%s)", peer.short_id, offer.mode,
                 f", avatar {offer.avatar}" if offer.avatar else "")
        answer = peer.pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": peer.id})

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        if peer.viewer:
            push = self.pushes.get(peer.hub.id)
            if push is not None:
                push.viewers.pop(peer.id, None)
        self.heap.soon()      # the session's memory is free now: hand it back to the system

    # -- the audio-push API
    async def create_push(self, request: web.Request) -> web.Response:
        """``POST /sessions``: a new avatar session driven by the audio-push API."""
        try:
            self._authorize(request)
            body = await self._read_body(request)
            wanted = parse_push(body, tuple(self.avatars), next(iter(self.avatars), None))
            self._check_capacity()
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        self._reserved += 1
        try:
            hub = await self._new_hub(wanted.avatar, wanted.rtmp)
        finally:
            self._reserved -= 1
        push = PushSession(hub, wanted.avatar, idle_timeout=self.config.push_idle_timeout,
                           socket_idle_timeout=self.config.socket_idle_timeout, max_ahead=self.config.max_ahead)
        self.pushes[push.id] = push
        hub.start()
        push.start(on_idle=lambda p: asyncio.ensure_future(self._end_push(p, "unused for "
                                                                          f"{self.config.push_idle_timeout:g} s")))
        self.metrics.sessions_started += 1
        log.info("push session %s started (avatar %s%s)", push.short_id, wanted.avatar,
                 ", streaming to RTMP" if wanted.rtmp else "")
        return web.json_response({"session": push.id, "avatar": wanted.avatar, "audio": f"/sessions/{push.id}/audio",
                                  "delay": round(hub.session.delay, 4),
                                  "record": str(hub.record_path) if hub.record_path else None}, status=201)

    async def _end_push(self, push: PushSession, reason: str) -> None:
        if self.pushes.pop(push.id, None) is None:
            return
        await push.close(reason)
        self.metrics.sessions_ended += 1
        self.heap.soon()

    def _push_from(self, request: web.Request) -> PushSession:
        self._authorize(request)
        return self._push(request.match_info["id"])

    async def audio_socket(self, request: web.Request) -> web.StreamResponse:
        """``GET /sessions/{id}/audio``: the WebSocket that carries a push session's speech."""
        try:
            push = self._push_from(request)
            if push.socket is not None:
                raise HTTPRefusal(409, "another client is already sending audio to this session; one at a time",
                                  "busy")
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            self.metrics.rejected["bad_request"] += 1
            return _json_error(400, "this route is a WebSocket: connect with 'Upgrade: websocket'")
        push.socket = ws                      # claimed before the first await: a second client gets 409
        try:
            await ws.prepare(request)
            await push.serve_socket(ws)
        finally:
            push.socket = None
            if ws.prepared and not ws.closed:
                await ws.close(code=int(CloseCode.NORMAL))
        return ws

    async def interrupt_push(self, request: web.Request) -> web.Response:
        """``POST /sessions/{id}/interrupt``: barge-in from outside the audio socket."""
        try:
            push = self._push_from(request)
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        push.interrupt()
        return web.json_response({"interrupted": push.id})

    async def delete_push(self, request: web.Request) -> web.Response:
        """``DELETE /sessions/{id}``: end the session; its recording is complete when this answers."""
        try:
            push = self._push_from(request)
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        await self._end_push(push, "deleted by the client")
        answer: dict = {"closed": push.id}
        hub = push.hub
        if hub.record_path is not None:
            answer["record"] = str(hub.record_path) if hub.record_path.exists() else None
        if hub.rtmp is not None:                       # what reached the RTMP server, and what was lost
            s = hub.rtmp.stats
            answer["rtmp"] = {"frames_sent": s.frames_sent, "frames_lost": s.frames_lost,
                              "audio_sent_s": round(s.audio_sent_s, 3), "audio_lost_s": round(s.audio_lost_s, 3),
                              "reconnects": s.reconnects, "failures": s.failures}
        return web.json_response(answer)

    async def close_session(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            body = await self._read_body(request)
            data = load_json(body, '{"session": ID}')
            if not isinstance(data, dict):
                raise HTTPRefusal(400, 'the body must be a JSON object: {"session": ID}', "bad_request")
            session_id = data.get("session")
        except HTTPRefusal as refusal:
            return self._refused(refusal)
        push = self.pushes.get(session_id) if isinstance(session_id, str) else None
        if push is not None:
            await self._end_push(push, "closed by the client")
            return web.json_response({"closed": session_id})
        peer = self.peers.get(session_id) if isinstance(session_id, str) else None
        if peer is None:
            return _json_error(404, "no such session (it may have ended already)")
        await peer.close("closed by the client")
        return web.json_response({"closed": session_id})

    async def metrics_page(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
        except HTTPRefusal as refusal:
            return _json_error(refusal.status, refusal.reason)
        stats = self.batcher.stats()
        drops = errors = 0
        owners = [peer.session for peer in self.peers.values() if not peer.viewer]
        for session in owners + [push.session for push in self.pushes.values()]:
            try:
                s = session.stats()
                drops += s.frames_dropped
                errors += s.engine_errors
            except Exception:  # noqa: BLE001 - a session mid-close still lets the page render
                pass
        text = render(self.metrics, active=len(owners) + len(self.pushes), max_sessions=self.config.max_sessions,
                      session_fps={p.short_id: p.fps.rate() for p in self.peers.values()},
                      pipeline_drops_active=drops, engine_errors_active=errors,
                      batch_sizes=dict(stats.sizes), engine_batches=stats.batches, engine_frames=stats.frames)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    # -- lifetime
    async def close(self) -> None:
        """Close every peer and push session (recordings are finalised), then the batcher if it is ours.
        Idempotent."""
        await asyncio.gather(*(peer.close("server shutting down") for peer in list(self.peers.values())),
                             *(self._end_push(push, "the server is shutting down") for push in list(self.pushes.values())),
                             return_exceptions=True)
        await self.heap.close()
        if self._owns_batcher:
            await self.batcher.close()


@contextlib.asynccontextmanager
async def listening(server: LipSyncServer, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``server`` in this event loop (port 0: any free port) and yield its base URL; for tests
    and benchmarks. Leaving the block closes every peer. The loop's default executor becomes the
    server's encoder pool (``encode_pool.py``)."""
    encode_pool.install(asyncio.get_running_loop(), server.config.encode_threads, server.config.encode_nice)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _quiet_closed_connections(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's exception handler, less one message: aiortc's connect task fails with InvalidStateError
    when a connection is closed while still connecting (a client that vanished), and nobody awaits that
    task, so asyncio would print its traceback. It is an expected end of a peer, logged at debug level."""
    error, task = context.get("exception"), context.get("future")
    if type(error).__name__ == "InvalidStateError" and "RTCPeerConnection.__connect" in repr(task):
        log.debug("a connection closed while connecting: %s", error)
        return
    loop.default_exception_handler(context)


async def serve_forever(engine: "Engine | MicroBatcher", avatar_paths: dict[str, Path], config: ServerConfig, *,
                        fps: float = 25.0,
                        blend: str = "feather", max_batch: int = 16, overhead_ms: Optional[float] = None,
                        max_overhead_ms: Optional[float] = SessionConfig.max_overhead_ms,
                        ready: Optional[Callable[[str], None]] = None,
                        idle_paths: Optional[dict[str, Path]] = None) -> None:
    """Prepare the avatars (with their idle clips), start the server, print its address, and run until
    cancelled (Ctrl-C)."""
    from .avatars import prepare_avatars

    asyncio.get_running_loop().set_exception_handler(_quiet_closed_connections)
    encode_pool.install(asyncio.get_running_loop(), config.encode_threads, config.encode_nice)
    avatars = await prepare_avatars(avatar_paths, engine, fps=fps, idle=idle_paths)
    server = LipSyncServer(engine, avatars, config, session_config=SessionConfig(
        fps=fps, blend=blend, overhead_ms=overhead_ms, max_overhead_ms=max_overhead_ms),
                           max_batch=max_batch)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    freeze_startup_objects()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as error:
            raise LipSyncError(f"cannot listen on {config.host}:{config.port}: {error.strerror or error}") from None
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{runner.addresses[0][1]}/"
        names = ", ".join(avatars) or "none"
        print(f"lipsync-rt serving on {url} (avatars: {names}; at most {config.max_sessions} sessions; "
              f"token {'required' if config.token else 'not required'}); Ctrl-C to stop", flush=True)
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await server.close()
        thaw()
