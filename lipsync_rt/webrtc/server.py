"""The WebRTC server: aiohttp signalling, one aiortc peer and one lip-sync session per client.

Routes: ``GET /`` (the page), ``GET /static/*``, ``GET /config`` (modes and avatar names for the
page), ``POST /offer`` (SDP offer in, complete answer out: aiortc gathers every candidate, there is no
trickle), ``POST /close`` (end a session now), ``GET /metrics`` (Prometheus text).

Safe by default: the command binds 127.0.0.1; with a token, ``/offer``, ``/close`` and ``/metrics``
need it; bodies are size-limited; avatars are chosen by name, never by path; the ICE configuration
holds only the STUN/TURN servers the operator configured (none by default, so nothing is contacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Optional

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from ..errors import LipSyncError
from .heap import HeapTrimmer
from .limits import MAX_BODY_BYTES, MODES, HTTPRefusal, OfferRequest, check_size, check_token, load_json, parse_offer
from .metrics import CONTENT_TYPE, ServerMetrics, render
from .peer import Peer

if TYPE_CHECKING:
    from ..engine import Engine, MicroBatcher
    from ..pipeline import Avatar, LipSyncSession, SessionConfig

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

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise LipSyncError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if self.max_body < 1024:
            raise LipSyncError(f"the body limit must be >= 1024 bytes, got {self.max_body}")
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
        from ..pipeline import LipSyncSession, SessionConfig

        return LipSyncSession(engine, avatar=avatar, config=self._session_config or SessionConfig())

    # -- routes
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_get("/", self.index)
        app.router.add_get("/config", self.client_config)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/close", self.close_session)
        app.router.add_get("/metrics", self.metrics_page)
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
            if len(self.peers) + self._reserved >= self.config.max_sessions:
                raise HTTPRefusal(503, f"the server is busy: all {self.config.max_sessions} sessions are in use; "
                                  "try again later", "busy")
        except HTTPRefusal as refusal:
            self.metrics.rejected[refusal.kind] += 1
            return _json_error(refusal.status, refusal.reason)
        self._reserved += 1  # held across the awaits below, so concurrent offers cannot overshoot
        try:
            return await self._answer(offer)
        except HTTPRefusal as refusal:
            self.metrics.rejected[refusal.kind] += 1
            return _json_error(refusal.status, refusal.reason)
        finally:
            self._reserved -= 1

    async def _answer(self, offer: OfferRequest) -> web.Response:
        ice = [RTCIceServer(urls=url) for url in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        session = None
        peer = None
        try:
            avatar = self.avatars[offer.avatar] if offer.mode == "avatar" else None
            session = self._session_factory(self.batcher, avatar)
            await session.start()
            peer = Peer(pc, session, offer.mode, self.metrics, self._forget)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except Exception as error:  # noqa: BLE001 - aiortc raises several types for a bad SDP
                raise HTTPRefusal(400, f"the SDP offer was refused: {error or type(error).__name__}",
                                  "bad_request") from None
            pc.addTrack(peer.video_track)
            pc.addTrack(peer.audio_track)
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            if peer is not None:
                await peer.close("offer failed")
            else:
                await pc.close()
                if session is not None:
                    await session.close()
            raise
        self.peers[peer.id] = peer
        peer.registered = True
        self.metrics.sessions_started += 1
        peer.watch_connect(self.config.connect_timeout)
        log.info("session %s started (%s mode%s)", peer.short_id, offer.mode,
                 f", avatar {offer.avatar}" if offer.avatar else "")
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": peer.id})

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        self.heap.soon()      # the session's memory is free now: hand it back to the system

    async def close_session(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request)
            body = await self._read_body(request)
            data = load_json(body, '{"session": ID}')
            if not isinstance(data, dict):
                raise HTTPRefusal(400, 'the body must be a JSON object: {"session": ID}', "bad_request")
            session_id = data.get("session")
        except HTTPRefusal as refusal:
            self.metrics.rejected[refusal.kind] += 1
            return _json_error(refusal.status, refusal.reason)
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
        for peer in self.peers.values():
            try:
                s = peer.session.stats()
                drops += s.frames_dropped
                errors += s.engine_errors
            except Exception:  # noqa: BLE001 - a session mid-close still lets the page render
                pass
        text = render(self.metrics, active=len(self.peers), max_sessions=self.config.max_sessions,
                      session_fps={p.short_id: p.fps.rate() for p in self.peers.values()},
                      pipeline_drops_active=drops, engine_errors_active=errors,
                      batch_sizes=dict(stats.sizes), engine_batches=stats.batches, engine_frames=stats.frames)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    # -- lifetime
    async def close(self) -> None:
        """Close every peer, then the batcher if it is ours. Idempotent."""
        await asyncio.gather(*(peer.close("server shutting down") for peer in list(self.peers.values())),
                             return_exceptions=True)
        await self.heap.close()
        if self._owns_batcher:
            await self.batcher.close()


@contextlib.asynccontextmanager
async def listening(server: LipSyncServer, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``server`` in this event loop (port 0: any free port) and yield its base URL; for tests
    and benchmarks. Leaving the block closes every peer."""
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
                        ready: Optional[Callable[[str], None]] = None,
                        idle_paths: Optional[dict[str, Path]] = None) -> None:
    """Prepare the avatars (with their idle clips), start the server, print its address, and run until
    cancelled (Ctrl-C)."""
    from ..pipeline import SessionConfig
    from .avatars import prepare_avatars

    asyncio.get_running_loop().set_exception_handler(_quiet_closed_connections)
    avatars = await prepare_avatars(avatar_paths, engine, fps=fps, idle=idle_paths)
    server = LipSyncServer(engine, avatars, config, session_config=SessionConfig(fps=fps, blend=blend, overhead_ms=overhead_ms),
                           max_batch=max_batch)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
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
