"""examples/pipecat_avatar.py end to end: its page in headless Chromium (Debian's, through Playwright),
connected over Pipecat's SmallWebRTCTransport to a bot whose avatar speaks, is interrupted, and
idles. Skipped without pipecat-ai or Chromium."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil

import pytest

pytest.importorskip("pipecat")
pytest.importorskip("playwright")

from conftest import EXAMPLE_FACE, ROOT, seeded_generator  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")


def load_example():
    spec = importlib.util.spec_from_file_location("pipecat_avatar", ROOT / "examples" / "pipecat_avatar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_bot_page_speaks_and_is_interrupted_in_a_browser(tmp_path):
    from aiohttp import web
    from playwright.async_api import async_playwright

    from lipsync_rt.engine import TorchEngine
    from lipsync_rt.pipeline import Avatar

    example = load_example()
    engine = TorchEngine(seeded_generator(seed=5))
    avatar = Avatar.prepare(EXAMPLE_FACE, engine)
    stats_js = """async () => {
        const out = {video: 0, audio: 0, width: 0};
        for (const r of (await window.bot.pc.getStats()).values()) {
            if (r.type === "inbound-rtp" && r.kind === "video") { out.video = r.framesDecoded; out.width = r.frameWidth; }
            if (r.type === "inbound-rtp" && r.kind === "audio") out.audio = r.totalSamplesReceived;
        }
        return out; }"""

    async def run():
        server = example.BotServer(avatar, engine=engine, wav=ROOT / "examples" / "speech.wav", overhead_ms=80)
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                    "--disable-background-networking", "--disable-component-update", "--no-first-run"])
                try:
                    page = await browser.new_page()
                    await page.goto(url)
                    await page.click("#connect")
                    await page.wait_for_function("window.bot.framesDecoded > 40", timeout=60000)
                    first = await page.evaluate(stats_js)
                    await page.click("#say")                      # a second reply, then cut it short
                    await asyncio.sleep(1.5)
                    speaking = len(server.workers)
                    await page.click("#interrupt")
                    await asyncio.sleep(1.0)
                    after = await page.evaluate(stats_js)
                    await page.screenshot(path=str(tmp_path / "pipecat_example.png"))
                    await page.evaluate("window.bot.pc.close()")
                finally:
                    await browser.close()
            for _ in range(100):                                  # the bot's pipeline ends with the peer
                if not server.workers:
                    break
                await asyncio.sleep(0.1)
            return first, after, speaking, len(server.workers)
        finally:
            await runner.cleanup()

    first, after, speaking, left = asyncio.run(run())
    assert first["width"] == avatar.frames[0].shape[1] and first["video"] > 40
    assert after["video"] > first["video"] + 30                    # pictures keep coming, idle or not
    assert after["audio"] > first["audio"]
    assert speaking == 1 and left == 0
    assert (tmp_path / "pipecat_example.png").stat().st_size > 5_000
