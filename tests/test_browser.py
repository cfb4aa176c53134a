"""A real browser: Debian's Chromium, headless, driven by Playwright (system executable, no browser
download), with fake camera and microphone fed a y4m face clip and a wav of speech. The page
connects, decodes video, plays the audio, and reports getStats(); a screenshot is kept."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write_wav
from test_webrtc import FPS, Served, avatar, camera_frame, engine, metric, speech_samples  # noqa: F401 - fixtures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")


def write_y4m(path: Path, frames, fps: int = 25) -> Path:
    """A hand-written y4m (plain C420 header: ffmpeg's C420mpeg2 is reported to crash Chrome)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("LIPSYNC_RT_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"browser test artefacts in {folder}")
    return folder


def chromium_args(video: Path, audio: Path) -> list[str]:
    """Fake devices fed by files (ignored without --use-fake-device-for-media-stream), autoplay allowed,
    and nothing that calls home. Playwright gives the browser a fresh temporary profile itself."""
    return [
        "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}", f"--use-file-for-fake-audio-capture={audio}",
        "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


CONNECTED = "window.lipsync && window.lipsync.stats && window.lipsync.stats.video.frames_decoded > 40 " \
            "&& window.lipsync.stats.audio.samples_received > 16000"


def test_page_in_headless_chromium_gets_lip_synced_video_and_audio(engine, avatar, camera_frame,  # noqa: F811
                                                                   speech_samples, tmp_path, artifacts):  # noqa: F811
    from playwright.async_api import async_playwright

    video = write_y4m(tmp_path / "face.y4m", [camera_frame] * 25)
    audio = write_wav(tmp_path / "speech.wav", np.asarray(speech_samples))

    async def run():
        async with Served(engine, {"face": avatar}) as served, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=chromium_args(video, audio))
            try:
                # Playwright's waits evaluate strings, which the page's CSP (no eval) would refuse.
                context = await browser.new_context(bypass_csp=True, viewport={"width": 1000, "height": 560})
                page = await context.new_page()
                await page.goto(served.url + "/?mode=camera&autostart=1")
                await page.wait_for_function(CONNECTED, timeout=30000)
                await asyncio.sleep(1.2)  # one more stats round, with the overlay drawn
                camera = await page.evaluate("window.lipsync")
                await page.screenshot(path=str(artifacts / "browser_camera.png"))
                during = await served.metrics()
                await page.click("#stop")
                for _ in range(50):
                    if not served.server.peers:
                        break
                    await asyncio.sleep(0.1)
                stopped = len(served.server.peers)

                await page.goto(served.url + "/?mode=avatar&avatar=face&autostart=1")
                await page.wait_for_function(CONNECTED, timeout=30000)
                avatar_state = await page.evaluate("window.lipsync")
                await page.screenshot(path=str(artifacts / "browser_avatar.png"))
                await page.click("#stop")
            finally:
                await browser.close()
            return camera, during, stopped, avatar_state

    camera, during, stopped, avatar_state = asyncio.run(run())
    (artifacts / "browser_stats.json").write_text(json.dumps({"camera": camera, "avatar": avatar_state}, indent=2))
    stats = camera["stats"]
    assert camera["error"] is None and camera["connectionState"] == "connected"
    assert stats["video"]["frames_decoded"] > 40
    assert (stats["video"]["width"], stats["video"]["height"]) == (camera_frame.shape[1], camera_frame.shape[0])
    assert stats["audio"]["samples_received"] > 16000  # the remote audio is played, not just received
    assert stats["rtt_ms"] is not None and stats["video"]["jitter_buffer_ms"] is not None
    assert metric(during, "lipsync_rt_frames_generated_total") > 0  # the server lip-synced the camera
    assert stopped == 0  # Stop ends the server's session at once
    assert avatar_state["stats"]["video"]["width"] == 512  # the avatar, not the camera
    assert (artifacts / "browser_camera.png").stat().st_size > 10_000


def test_page_watches_a_push_session_alongside_another_viewer(engine, avatar, camera_frame,  # noqa: F811
                                                               speech_samples, tmp_path, artifacts):  # noqa: F811
    """?session=ID: the page sends nothing and shows the pushed session; it joins after an aiortc viewer,
    so it decodes the session's shared encoder from the key frame its arrival asked for."""
    from playwright.async_api import async_playwright

    from lipsync_rt.webrtc.loopback import LoopbackClient

    video = write_y4m(tmp_path / "face.y4m", [camera_frame] * 25)
    audio = write_wav(tmp_path / "speech.wav", np.asarray(speech_samples))
    pcm = (np.asarray(speech_samples[:48000]) * 32767).astype("<i2").tobytes()

    async def run():
        async with Served(engine, {"face": avatar}) as served, async_playwright() as pw:
            async with served.http.post(served.url + "/sessions", json={}) as response:
                session = (await response.json())["session"]
            first = LoopbackClient(served.url, session=session, fps=FPS)
            await first.connect(served.http)
            async with served.http.ws_connect(f"{served.url}/sessions/{session}/audio") as ws:
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}))
                await ws.send_bytes(pcm)
                await ws.send_str('{"type": "end_of_segment"}')
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=chromium_args(video, audio))
                try:
                    context = await browser.new_context(bypass_csp=True, viewport={"width": 1000, "height": 560})
                    page = await context.new_page()
                    await page.goto(served.url + f"/?session={session}&autostart=1")
                    await page.wait_for_function(CONNECTED, timeout=30000)
                    state = await page.evaluate("window.lipsync")
                    await page.screenshot(path=str(artifacts / "browser_watch.png"))
                    await page.click("#stop")
                    for _ in range(50):
                        if len(served.server.peers) == 1:
                            break
                        await asyncio.sleep(0.1)
                    viewers_left = len(served.server.peers)
                finally:
                    await browser.close()
            still_running = session in served.server.pushes      # Stop ended the viewer, not the session
            await first.close(served.http)
            return state, viewers_left, still_running, first.received

    state, viewers_left, still_running, first = asyncio.run(run())
    assert state["error"] is None and state["stats"]["video"]["frames_decoded"] > 40
    assert state["stats"]["video"]["width"] == avatar.frames[0].shape[1]
    assert state["stats"]["audio"]["samples_received"] > 16000
    assert viewers_left == 1 and still_running
    assert len(first.video_times) > 40                              # the first viewer went on meanwhile
