"""The audio-push API of ``lipsync-rt serve``: sessions made over HTTP, speech over a WebSocket, segment
events back, viewers over WebRTC sharing one session's frames, and every bad input answered with its
reason or close code while the session goes on and nothing is left behind."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil

import aiohttp
import numpy as np
import pytest

from conftest import EXAMPLE_FACE, ROOT, seeded_generator
from lipsync_rt.pipeline import SessionConfig
from lipsync_rt.pipeline.segments import PlaybackFinished, PlaybackStarted
from lipsync_rt.webrtc import HTTPRefusal, LipSyncServer, ServerConfig
from lipsync_rt.webrtc.limits import parse_push, parse_offer
from lipsync_rt.webrtc.loopback import LoopbackClient
from lipsync_rt.webrtc.push_protocol import (CloseCode, EndOfSegment, Interrupt, Pacer, ProtocolError, Start,
                                             check_audio, event_message, parse_control)
from lipsync_rt.webrtc.server import listening

FPS = 25.0
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- the protocol, piece by piece

def test_control_messages_parse_and_bad_ones_say_why():
    assert parse_control('{"type": "start", "sample_rate": 24000, "channels": 2}') == Start(24000, 2)
    assert parse_control('{"type": "start", "sample_rate": 8000}') == Start(8000, 1)
    assert parse_control('{"type": "end_of_segment"}') == EndOfSegment()
    assert parse_control('{"type": "interrupt"}') == Interrupt()
    for text, words in [('{"type": "start", "sample_rate": 7999}', "outside 8000-96000"),
                        ('{"type": "start", "sample_rate": 96001}', "outside 8000-96000"),
                        ('{"type": "start", "sample_rate": "48k"}', "must be an integer"),
                        ('{"type": "start", "sample_rate": 16000, "channels": 9}', "outside 1-8"),
                        ('{"type": "start", "sample_rate": true}', "must be an integer"),
                        ('{"type": "play"}', "unknown message type"),
                        ("[1, 2]", "JSON objects"), ("not json", "JSON objects")]:
        with pytest.raises(ProtocolError, match=words) as caught:
            parse_control(text)
        assert caught.value.code == CloseCode.BAD_MESSAGE


def test_audio_must_follow_start_and_be_whole_samples():
    with pytest.raises(ProtocolError, match="audio before"):
        check_audio(640, None)
    check_audio(640, Start(16000, 1))
    with pytest.raises(ProtocolError, match="641 bytes is not whole s16le samples of 1 channel"):
        check_audio(641, Start(16000, 1))
    with pytest.raises(ProtocolError, match="2 channel"):
        check_audio(642, Start(16000, 2))


def test_pacer_allows_a_burst_and_refuses_a_flood():
    pacer = Pacer(max_ahead=5.0)
    assert pacer.push(4.0, now=100.0) == 4.0          # a whole reply at once is fine
    assert pacer.push(1.0, now=110.0) == 1.0          # after a pause it plays from now, not from the backlog
    pacer.push(3.0, now=110.0)
    with pytest.raises(ProtocolError, match="faster than real time") as caught:
        pacer.push(2.0, now=110.0)
    assert caught.value.code == CloseCode.TOO_FAST
    pacer.reset(now=111.0)                            # an interrupt dropped the backlog
    assert pacer.push(2.0, now=111.0) == 2.0


def test_events_become_json():
    assert event_message(PlaybackStarted(3, 16000)) == {"type": "playback_started", "segment": 3, "time": 1.0}
    assert event_message(PlaybackFinished(3, 0.5, True, 24000)) == {
        "type": "playback_finished", "segment": 3, "position": 0.5, "interrupted": True, "time": 1.5}


def test_push_requests_are_validated():
    assert parse_push(b"", ("face",), "face").avatar == "face"
    assert parse_push(b'{"rtmp": "rtmp://127.0.0.1/live/x"}', ("face",), "face").rtmp == "rtmp://127.0.0.1/live/x"
    for body, words in [(b'{"avatar": "bob"}', "unknown avatar"), (b'{"rtmp": "http://x"}', "rtmp://"),
                        (b'{"colour": 1}', "unknown field"), (b"[]", "JSON object"), (b"{", "not JSON")]:
        with pytest.raises(HTTPRefusal, match=words):
            parse_push(body, ("face",), "face")
    with pytest.raises(HTTPRefusal, match="need an avatar"):
        parse_push(b"{}", (), None)
    sdp = "v=0\r\nm=audio 9 UDP 111\r\nm=video 9 UDP 96\r\n"
    offer = parse_offer(json.dumps({"sdp": sdp, "type": "offer", "session": "abc"}).encode(), ("face",), "face")
    assert offer.session == "abc" and offer.mode == "avatar"
    with pytest.raises(HTTPRefusal, match="'session' must be"):
        parse_offer(json.dumps({"sdp": sdp, "type": "offer", "session": 5}).encode(), ("face",), "face")


# -- the server, end to end

@pytest.fixture(scope="module")
def engine():
    from lipsync_rt.engine import TorchEngine

    return TorchEngine(seeded_generator(seed=3))


@pytest.fixture(scope="module")
def avatar(engine):
    from lipsync_rt.pipeline import Avatar

    return Avatar.prepare(EXAMPLE_FACE, engine, fps=FPS)


def tone(seconds: float, rate: int, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    return np.repeat(x[:, None], channels, axis=1).tobytes()


class Served:
    def __init__(self, engine, avatars, **config):
        config.setdefault("token", TOKEN)
        self.engine, self.avatars, self.config = engine, avatars, ServerConfig(**config)

    async def __aenter__(self):
        self.server = LipSyncServer(self.engine, self.avatars, self.config,
                                    session_config=SessionConfig(fps=FPS, overhead_ms=80))
        self._listening = listening(self.server)
        self.url = await self._listening.__aenter__()
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self._listening.__aexit__(*exc)
        await self.server.close()

    async def create(self, **body) -> str:
        async with self.http.post(self.url + "/sessions", json=body, headers=AUTH) as response:
            data = await response.json()
            assert response.status == 201, data
            return data["session"]

    def socket(self, session: str, headers=AUTH, **kw):
        return self.http.ws_connect(f"{self.url}/sessions/{session}/audio", headers=headers, **kw)


async def next_json(ws, kind: str, timeout: float = 10.0) -> dict:
    """The next text message of type ``kind`` (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - asyncio.get_running_loop().time()))
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] == kind:
                return data
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            raise AssertionError(f"closed ({ws.close_code}) while waiting for {kind}")


async def closed_with(ws, timeout: float = 10.0) -> tuple[int, str]:
    """Read until the server closes; the close code and the last error reason sent before it."""
    reason = ""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
            reason = json.loads(msg.data)["reason"]
        if msg.type == aiohttp.WSMsgType.CLOSE:          # the code the server sent (close_code may read 1006)
            return msg.data, reason
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code, reason


def test_pushed_speech_plays_with_events_and_viewers_share_the_session(engine, avatar):
    async def run():
        async with Served(engine, {"face": avatar}) as served:
            sid = await served.create(avatar="face")
            push = served.server.pushes[sid]
            viewers = [LoopbackClient(served.url, session=sid, token=TOKEN, fps=FPS) for _ in range(2)]
            for viewer in viewers:
                await viewer.connect(served.http)
            async with served.socket(sid) as ws:
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 24000, "channels": 2}))
                ready = await next_json(ws, "ready")
                speech = tone(1.0, 24000, 2)
                for k in range(0, len(speech), 9600):              # 100 ms messages, twice real time
                    await ws.send_bytes(speech[k:k + 9600])
                    await asyncio.sleep(0.05)
                await ws.send_str('{"type": "end_of_segment"}')
                started = await next_json(ws, "playback_started")
                finished = await next_json(ws, "playback_finished")
                # a second reply, cut by the REST interrupt
                await ws.send_bytes(tone(2.0, 24000, 2))
                await next_json(ws, "playback_started")
                async with served.http.post(f"{served.url}/sessions/{sid}/interrupt", headers=AUTH) as response:
                    assert response.status == 200
                cut = await next_json(ws, "playback_finished")
                await asyncio.sleep(0.3)
                received = [v.received for v in viewers]
                async with served.http.delete(f"{served.url}/sessions/{sid}", headers=AUTH) as response:
                    assert response.status == 200
                code, _ = await closed_with(ws)
            for viewer in viewers:
                await viewer.close()
            await asyncio.sleep(0.1)
            return ready, started, finished, cut, received, code, push, served.server

    ready, started, finished, cut, received, code, push, server = asyncio.run(run())
    assert ready["sample_rate"] == 24000 and ready["channels"] == 2 and ready["delay"] > 0
    assert started["segment"] == 1 and finished["segment"] == 1
    assert finished["interrupted"] is False and finished["position"] == pytest.approx(1.0, abs=0.02)
    assert cut["segment"] == 2 and cut["interrupted"] is True and 0 < cut["position"] < 2.0
    for rec in received:                   # both viewers got the session's video and its speech
        assert len(rec.video_times) >= 25 and rec.audio_frames >= 50 and rec.audio_peak > 0.05
        assert rec.size == (avatar.frames[0].shape[1], avatar.frames[0].shape[0])
    # the two viewers' video was encoded once: every picture served twice (give or take the ends)
    encoders = push.hub.encoders
    assert encoders.encoded >= 25 and encoders.served >= 1.8 * encoders.encoded, (encoders.encoded, encoders.served)
    assert code == CloseCode.NORMAL
    assert not server.pushes and not server.peers and not push.session.running
    assert push.hub.broadcast.subscribers == 0


def test_bad_input_gets_a_reason_and_the_session_goes_on(engine, avatar):
    async def run():
        results = {}
        async with Served(engine, {"face": avatar}, max_sessions=2, socket_idle_timeout=0.5, max_ahead=3.0,
                          max_message=64 * 1024) as served:
            http, url = served.http, served.url
            async with http.post(url + "/sessions", json={}) as r:
                results["no token"] = (r.status, (await r.json())["error"])
            async with http.post(url + "/sessions", json={}, headers={"Authorization": "Bearer nope"}) as r:
                results["wrong token"] = (r.status, (await r.json())["error"])
            async with http.post(url + "/sessions", json={"avatar": "bob"}, headers=AUTH) as r:
                results["bad avatar"] = r.status
            for method, path in [("get", "/sessions/nope/audio"), ("post", "/sessions/nope/interrupt"),
                                 ("delete", "/sessions/nope")]:
                async with http.request(method, url + path, headers=AUTH) as r:
                    results[path] = (r.status, (await r.json())["error"])
            sid = await served.create()
            async with http.get(f"{url}/sessions/{sid}/audio") as r:          # the socket needs the token too
                results["socket no token"] = r.status
            async with http.get(f"{url}/sessions/{sid}/audio", headers=AUTH) as r:     # not a WebSocket
                results["plain GET"] = (r.status, (await r.json())["error"])
            push = served.server.pushes[sid]

            async def attempt(*messages):
                async with served.socket(sid) as ws:
                    for m in messages:
                        await (ws.send_str(m) if isinstance(m, str) else ws.send_bytes(m))
                    return await closed_with(ws)

            start = json.dumps({"type": "start", "sample_rate": 16000, "channels": 1})
            results["before start"] = await attempt(tone(0.1, 16000))
            results["odd bytes"] = await attempt(start, b"\x00" * 641)
            results["rate"] = await attempt(json.dumps({"type": "start", "sample_rate": 200000}))
            results["too big"] = await attempt(start, b"\x00" * (64 * 1024 + 2))
            results["too fast"] = await attempt(start, *[tone(1.0, 16000)] * 5)
            results["stalled"] = await attempt(start)                            # then nothing: 0.5 s idle
            results["running"] = push.session.running
            async with served.socket(sid) as ws:                                 # one client at a time
                async with http.get(f"{url}/sessions/{sid}/audio", headers=AUTH) as r:
                    results["second socket"] = (r.status, (await r.json())["error"])
                await ws.send_str(start)
                await next_json(ws, "ready")                                     # the session still works
                await ws.send_bytes(tone(0.3, 16000))
                await ws.send_str('{"type": "end_of_segment"}')
                results["after"] = await next_json(ws, "playback_finished")
            sid2 = await served.create()
            async with http.post(url + "/sessions", json={}, headers=AUTH) as r:
                results["busy"] = r.status
            async with http.delete(f"{url}/sessions/{sid2}", headers=AUTH) as r:
                assert r.status == 200
            async with http.delete(f"{url}/sessions/{sid}", headers=AUTH) as r:
                assert r.status == 200
            async with http.delete(f"{url}/sessions/{sid}", headers=AUTH) as r:
                results["deleted twice"] = r.status
            results["left"] = (dict(served.server.pushes), dict(served.server.peers), push.session.running)
            metrics = await (await http.get(url + "/metrics", headers=AUTH)).text()
            results["metrics"] = metrics
        return results

    r = asyncio.run(run())
    assert r["no token"][0] == 401 and "needs a token" in r["no token"][1]
    assert r["wrong token"] == (401, "wrong token")
    assert r["bad avatar"] == 400
    for path in ("/sessions/nope/audio", "/sessions/nope/interrupt", "/sessions/nope"):
        assert r[path][0] == 404 and "no such session" in r[path][1]
    assert r["socket no token"] == 401
    assert r["plain GET"][0] == 400 and "WebSocket" in r["plain GET"][1]
    assert r["before start"] == (CloseCode.BAD_MESSAGE, r["before start"][1]) and "audio before" in r["before start"][1]
    assert r["odd bytes"][0] == CloseCode.BAD_MESSAGE and "641 bytes" in r["odd bytes"][1]
    assert r["rate"][0] == CloseCode.BAD_MESSAGE and "outside 8000-96000" in r["rate"][1]
    assert r["too big"][0] == CloseCode.TOO_BIG
    assert r["too fast"][0] == CloseCode.TOO_FAST and "faster than real time" in r["too fast"][1]
    assert r["stalled"][0] == CloseCode.STALLED and "nothing received" in r["stalled"][1]
    assert r["running"] is True
    assert r["second socket"][0] == 409
    assert r["after"]["interrupted"] is False
    assert r["busy"] == 503
    assert r["deleted twice"] == 404
    assert r["left"] == ({}, {}, False)
    assert 'rejected_total{reason="not_found"}' in r["metrics"]


def test_an_unused_push_session_ends_by_itself(engine, avatar):
    async def run():
        async with Served(engine, {"face": avatar}, push_idle_timeout=0.4) as served:
            sid = await served.create()
            push = served.server.pushes[sid]
            await asyncio.sleep(1.5)
            return sid in served.server.pushes, push.session.running

    assert asyncio.run(run()) == (False, False)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_the_espeak_example_streams_replies_and_hears_their_events(engine, avatar, capsys):
    spec = importlib.util.spec_from_file_location("push_tts", ROOT / "examples" / "push_tts.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    async def run():
        async with Served(engine, {"face": avatar}) as served:
            args = argparse.Namespace(text=["Hello.", "A second reply, cut short by a barge in."],
                                      server=served.url, token=TOKEN, session=None, avatar=None, rtmp=None,
                                      voice="en", speed=220, burst=True, interrupt_after=0.6, keep=False)
            code = await asyncio.wait_for(example.main(args), 30)
            return code, dict(served.server.pushes)

    code, left = asyncio.run(run())
    out = capsys.readouterr().out
    assert code == 0 and left == {}
    assert out.count("'playback_started'") == 2
    assert "'segment': 1, 'position'" in out and "'interrupted': False" in out
    assert "'segment': 2, 'position'" in out and "'interrupted': True" in out
    assert "session deleted (200)" in out


def own_tasks() -> list[str]:
    """The running tasks, less the long-lived shared ones (the batcher's collector, aiohttp's keep-alive
    handlers): what sessions start must all be gone after they end."""
    shared = ("MicroBatcher._collect", "RequestHandler.start")
    return sorted(n for n in (t.get_coro().__qualname__ for t in asyncio.all_tasks()) if n not in shared)


def test_push_sessions_leave_nothing_behind(engine, avatar):
    """Sessions made, spoken into (also badly), watched and deleted, or dropped by a vanished client:
    afterwards no session object survives and the loop runs no more tasks than before."""
    import gc
    import weakref

    async def run():
        async with Served(engine, {"face": avatar}, socket_idle_timeout=0.3, push_idle_timeout=0.6) as served:
            await asyncio.sleep(0.2)
            baseline = own_tasks()
            refs = []
            for k in range(3):
                sid = await served.create()
                refs.append(weakref.ref(served.server.pushes[sid].session))
                viewer = LoopbackClient(served.url, session=sid, token=TOKEN, fps=FPS)
                await viewer.connect(served.http)
                for _ in range(50):      # connected (aiortc's own tasks of a connection closed while still
                    if viewer.pc.connectionState == "connected":       # connecting outlive it: not ours)
                        break
                    await asyncio.sleep(0.1)
                async with served.socket(sid) as ws:
                    await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000}))
                    await ws.send_bytes(tone(0.2, 16000))
                    if k == 1:
                        await ws.send_bytes(b"\x00")            # odd: closed by the server
                        await closed_with(ws)
                await viewer.close(served.http)
                if k < 2:
                    async with served.http.delete(f"{served.url}/sessions/{sid}", headers=AUTH) as response:
                        assert response.status == 200
            for _ in range(40):                                 # the last one: ended for being unused
                if not served.server.pushes:
                    break
                await asyncio.sleep(0.1)
            for _ in range(30):              # aiortc's own tasks of the closed connections wind down
                await asyncio.sleep(0.1)
                if own_tasks() == baseline:
                    break
            gc.collect()
            return baseline, own_tasks(), [ref() is None for ref in refs], dict(served.server.pushes)

    baseline, after, freed, left = asyncio.run(run())
    assert left == {} and all(freed), freed
    assert after == baseline


def test_a_shared_encoder_encodes_each_picture_once_and_resyncs_a_viewer_that_skipped():
    from types import SimpleNamespace

    from aiortc import RTCRtpCodecParameters

    from lipsync_rt.webrtc.shared_video import SharedEncoders, ViewerEncoder

    class Fake:
        target_bitrate = 500_000

        def __init__(self):
            self.calls = []

        def encode(self, frame, force):
            self.calls.append((frame.pts, force))
            return [bytes([frame.pts])], frame.pts * 3600

    encoders = SharedEncoders()
    shared = encoders.for_codec(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    assert encoders.for_codec(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)) is shared
    shared._encoder = fake = Fake()
    a, b = ViewerEncoder(shared), ViewerEncoder(shared)
    frame = lambda pts: SimpleNamespace(pts=pts)  # noqa: E731
    for viewer, pts in [(a, 0), (b, 0), (a, 1), (b, 1), (a, 2), (a, 3), (b, 3), (a, 4), (b, 4)]:
        assert viewer.encode(frame(pts)) == ([bytes([pts])], pts * 3600)   # the same payloads for both
    assert [pts for pts, _ in fake.calls] == [0, 1, 2, 3, 4]             # each picture encoded once
    assert [force for _, force in fake.calls] == [False, False, False, False, True]   # b skipped 2: a key frame
    assert (b.skips, a.skips, encoders.encoded, encoders.served) == (1, 0, 5, 9)
    b.target_bitrate = 300_000
    assert fake.target_bitrate == 300_000
