"""The WebRTC server end to end, in-process: an aiortc client on loopback sends a face clip and
speech (camera mode) or speech alone (avatar mode) and gets the lip-synced video and the audio back.
The real pipeline runs with the bundled lite model, shared through one micro-batcher. Also: every
bad request gets its status and reason, and cleanup leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

import aiohttp
import numpy as np
import pytest

from conftest import EXAMPLE_FACE, face_frames
from lipsync_rt.audio import load_audio
from lipsync_rt.errors import LipSyncError
from lipsync_rt.webrtc import LipSyncServer, ServerConfig
from lipsync_rt.webrtc.loopback import LoopbackClient
from lipsync_rt.webrtc.server import listening

FPS = 25.0


@pytest.fixture(scope="module")
def engine():
    from lipsync_rt.default_model import load_generator
    from lipsync_rt.engine import TorchEngine

    return TorchEngine(load_generator(None)[0], device="cpu")


@pytest.fixture(scope="module")
def avatar(engine):
    from lipsync_rt.pipeline import Avatar

    return Avatar.prepare(EXAMPLE_FACE, engine, fps=FPS)


@pytest.fixture(scope="module")
def speech_samples(speech) -> np.ndarray:
    return load_audio(speech)


@pytest.fixture(scope="module")
def camera_frame(photo) -> np.ndarray:
    return face_frames(photo, 1, blank=())[0]


class Served:
    """A server in this event loop, sharing one micro-batcher, torn down with everything it made."""

    def __init__(self, engine, avatars, config=ServerConfig()):
        self.engine, self.avatars, self.config = engine, avatars, config

    async def __aenter__(self):
        from lipsync_rt.engine.batcher import MicroBatcher

        self.batcher = MicroBatcher(self.engine, max_batch=16)
        self.server = LipSyncServer(self.batcher, self.avatars, self.config)
        self._listening = listening(self.server)
        self.url = await self._listening.__aenter__()
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self._listening.__aexit__(*exc)
        await self.batcher.close()

    async def metrics(self, token=None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.url + "/metrics", headers=headers) as response:
            assert response.status == 200
            return await response.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def region_diff(a: np.ndarray, b: np.ndarray, box) -> tuple[float, float]:
    """Mean absolute difference in the mouth region and in the eye region of the face ``box``."""
    x1, y1, x2, y2 = box
    h = y2 - y1
    mouth = (slice(y1 + int(0.6 * h), y2), slice(x1 + (x2 - x1) // 5, x2 - (x2 - x1) // 5))
    eyes = (slice(y1 + int(0.1 * h), y1 + int(0.45 * h)), mouth[1])
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2)
    return float(diff[mouth].mean()), float(diff[eyes].mean())


def test_camera_mode_returns_the_face_lip_synced_at_the_frame_rate_with_audio(engine, avatar, camera_frame,
                                                                              speech_samples):
    from lipsync_rt.face import FaceDetector

    async def run():
        async with Served(engine, {"face": avatar}) as served:
            client = LoopbackClient(served.url, mode="camera", frames=[camera_frame], speech=speech_samples,
                                    fps=FPS, keep_every=5)
            await client.connect(served.http)
            await asyncio.sleep(4.0)
            text = await served.metrics()
            await client.close(served.http)
            return client.received, text

    received, text = asyncio.run(run())
    assert received.size == (camera_frame.shape[1], camera_frame.shape[0])
    # Paced on the media clock: about FPS, never faster (an unpaced track would flood the peer).
    assert 0.5 * FPS <= received.fps() <= 1.3 * FPS, received.fps()
    assert len(received.video_times) >= 1.5 * FPS
    assert received.audio_frames >= 50 and received.audio_peak > 0.02  # the speech came back
    assert metric(text, "lipsync_rt_frames_generated_total") > 0
    box = FaceDetector().detect(camera_frame).box
    late = [image for t, image in received.frames if t >= received.video_times[0] + 1.0]
    diffs = [region_diff(image, camera_frame, box) for image in late]
    # The codec changes every region a little; the generated mouth changes much more.
    assert len(diffs) >= 5 and sum(m - 2 * e > 3.0 for m, e in diffs) >= len(diffs) / 3, diffs


def test_avatar_mode_speaks_with_the_prepared_avatar(engine, avatar, speech_samples):
    async def run():
        async with Served(engine, {"anna": avatar}) as served:
            client = LoopbackClient(served.url, mode="avatar", avatar="anna", speech=speech_samples, fps=FPS)
            await client.connect(served.http)
            await asyncio.sleep(3.0)
            text = await served.metrics()
            await client.close(served.http)
            return client.received, text

    received, text = asyncio.run(run())
    assert received.size == (512, 512)  # the avatar's own frames
    assert 0.5 * FPS <= received.fps() <= 1.3 * FPS, received.fps()
    assert received.audio_frames >= 50 and received.audio_peak > 0.02
    assert metric(text, "lipsync_rt_frames_generated_total") > 0
    assert metric(text, 'lipsync_rt_engine_batch_size_count') > 0


def test_bad_requests_get_a_status_and_a_reason(engine, avatar, camera_frame, speech_samples):
    token = "s3cret"
    auth = {"Authorization": f"Bearer {token}"}

    async def run():
        config = ServerConfig(token=token, max_sessions=1, max_body=4096)
        async with Served(engine, {"face": avatar}, config) as served:
            http, url = served.http, served.url
            results = {}

            async def post(name, data, headers=auth, path="/offer"):
                async with http.post(url + path, data=data, headers=headers) as response:
                    results[name] = (response.status, (await response.json()).get("error", ""))

            await post("no token", "{}", headers={})
            await post("wrong token", "{}", headers={"Authorization": "Bearer nope"})
            await post("not json", "{sdp")
            await post("not an offer", json.dumps({"sdp": "v=0\r\n", "type": "offer"}))
            bad_sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 x\r\na=garbage\r\n"
            await post("malformed sdp", json.dumps({"sdp": bad_sdp, "type": "offer"}))
            await post("path as avatar", json.dumps({"sdp": bad_sdp, "type": "offer", "mode": "avatar",
                                                     "avatar": str(EXAMPLE_FACE)}))
            await post("oversized", json.dumps({"sdp": "v=0" + "x" * 8000, "type": "offer"}))
            await post("close unknown", json.dumps({"session": "nope"}), path="/close")
            async with http.get(url + "/metrics") as response:
                results["metrics without token"] = (response.status, "")
            async with http.get(url + "/static/../server.py") as response:
                results["traversal"] = (response.status, "")
            async with http.get(url + "/config") as response:
                results["config"] = await response.json()
            async with http.get(url + "/") as response:
                results["page"] = (response.status, response.headers.get("Content-Security-Policy", ""),
                                   await response.text())

            first = LoopbackClient(url, mode="avatar", avatar="face", speech=speech_samples, token=token)
            await first.connect(http)
            second = LoopbackClient(url, mode="camera", frames=[camera_frame], speech=speech_samples, token=token)
            with pytest.raises(LipSyncError) as busy:
                await second.connect(http)
            results["busy"] = str(busy.value)
            await second.close()
            text = await served.metrics(token)
            await first.close(http)
            return results, text

    results, text = asyncio.run(run())
    assert results["no token"][0] == 401 and "token" in results["no token"][1]
    assert results["wrong token"] == (401, "wrong token")
    assert results["not json"][0] == 400 and "not JSON" in results["not json"][1]
    assert results["not an offer"][0] == 400 and "media" in results["not an offer"][1]
    assert results["malformed sdp"][0] == 400 and "SDP offer was refused" in results["malformed sdp"][1]
    assert results["path as avatar"][0] == 400 and "unknown avatar" in results["path as avatar"][1]
    assert results["oversized"][0] == 413 and "limit" in results["oversized"][1]
    assert results["close unknown"][0] == 404
    assert results["metrics without token"][0] == 401
    assert results["traversal"][0] in (403, 404)
    assert results["config"]["avatars"] == ["face"] and results["config"]["token_required"] is True
    assert str(EXAMPLE_FACE) not in json.dumps(results["config"])  # names only, never paths
    assert results["config"]["ice_servers"] == []  # no STUN unless configured
    status, csp, html = results["page"]
    assert status == 200 and "default-src 'self'" in csp and "/static/app.js" in html
    assert "(503)" in results["busy"] and "all 1 sessions are in use" in results["busy"]
    assert 'lipsync_rt_offers_rejected_total{reason="busy"} 1' in text
    assert 'lipsync_rt_offers_rejected_total{reason="unauthorized"} 2' in text
    assert 'lipsync_rt_offers_rejected_total{reason="too_large"} 1' in text


def test_a_peer_that_never_connects_is_cleaned_up(engine, avatar, speech_samples):
    async def run():
        config = ServerConfig(connect_timeout=1.0)
        async with Served(engine, {"face": avatar}, config) as served:
            client = LoopbackClient(served.url, mode="avatar", speech=speech_samples)
            # A client that posts an offer and vanishes: its answer is never applied.
            client.pc.addTransceiver("audio")
            client.pc.addTransceiver("video", direction="recvonly")
            await client.pc.setLocalDescription(await client.pc.createOffer())
            body = {"sdp": client.pc.localDescription.sdp, "type": "offer", "mode": "avatar"}
            async with served.http.post(served.url + "/offer", json=body) as response:
                assert response.status == 200
            opened = len(served.server.peers)
            session = weakref.ref(next(iter(served.server.peers.values())).session)
            await client.pc.close()
            for _ in range(50):
                if not served.server.peers:
                    break
                await asyncio.sleep(0.1)
            return opened, len(served.server.peers), served.server.metrics.sessions_ended, session

    opened, left, ended, session = asyncio.run(run())
    assert (opened, left, ended) == (1, 0, 1)
    gc.collect()
    assert session() is None


def test_audio_comes_back_at_the_level_it_was_sent(engine, avatar):
    """Mono audio goes out as stereo at its own level: FFmpeg's mono-to-stereo upmix (which aiortc's Opus
    encoder would apply) takes 3 dB off each channel, and a round trip lost 6 dB."""
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)

    async def run():
        async with Served(engine, {"anna": avatar}) as served:
            client = LoopbackClient(served.url, mode="avatar", avatar="anna", speech=tone, fps=FPS)
            await client.connect(served.http)
            await asyncio.sleep(2.5)
            await client.close(served.http)
            return client.received

    received = asyncio.run(run())
    assert received.audio_frames >= 40
    # At its level: not 6 dB down (it was about 0.25). Opus rings a little over a tone's edges (where a
    # starved machine had to fill in silence), so the peak may come out somewhat above 0.5.
    assert 0.44 <= received.audio_peak <= 0.7
